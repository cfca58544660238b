// Loads the UI's entry module. A classic script with a dynamic import rather
// than <script type="module">, so that a module that fails to load or
// evaluate (an old browser, a broken locale) is reported on the page instead
// of leaving it blank.
import('./app.js').catch((e) => {
  const main = document.getElementById('main');
  if (main) main.textContent = `The Trainyard UI failed to load: ${e}`;
});
