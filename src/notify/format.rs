//! Turning an event into what each sink accepts, within its limits: pure
//! functions, no IO. [`Message`] is the sink-neutral text (title, lines,
//! a link into the UI); [`payload`] renders it per [`SinkKind`].
//!
//! Limits (checked by the tests and by the test receivers):
//! Slack: 3,000 characters per section text, 150 per header; Discord:
//! 2,000 characters of `content`, embed title 256, description 4,096,
//! field value 1,024, footer 2,048 and 6,000 for the whole embed; ntfy:
//! a 4,096-byte message (longer ones become attachments).

use serde_json::{json, Value};

use super::event::{Event, EventKind};
use super::sink::SinkKind;

/// Slack: characters in one section's text.
pub const SLACK_SECTION: usize = 3000;
/// Slack: characters in a header block's text.
pub const SLACK_HEADER: usize = 150;
/// Discord: characters of a message's `content`.
pub const DISCORD_CONTENT: usize = 2000;
/// Discord: characters of an embed's title.
pub const DISCORD_TITLE: usize = 256;
/// Discord: characters of an embed's description.
pub const DISCORD_DESCRIPTION: usize = 4096;
/// Discord: characters of a field's value.
pub const DISCORD_FIELD: usize = 1024;
/// Discord: characters of all of an embed's text together.
pub const DISCORD_EMBED_TOTAL: usize = 6000;
/// ntfy: bytes of a message before the server turns it into an attachment.
pub const NTFY_MESSAGE_BYTES: usize = 4096;

/// The sink-neutral message of one event.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// One line: "Job 12 failed: train-detr".
    pub title: String,
    /// Facts, one per line ("user ana", "exit code 3").
    pub facts: Vec<(String, String)>,
    /// The reason or error, free text (may be long).
    pub detail: Option<String>,
    /// Where to look in the UI.
    pub link: String,
    /// Bad news (a failure, a loss, a low disk).
    pub alarm: bool,
}

/// The UI address of what the event is about: `UI/#/queue/ID` for a job,
/// `UI/#/runs/ID` for a run, `UI/#/gpus` for an agent, else the UI.
pub fn link(ui: &str, kind: EventKind, e: &Event) -> String {
    let ui = ui.trim_end_matches('/');
    if let Some(j) = e.job {
        format!("{ui}/#/queue/{j}")
    } else if let Some(r) = &e.run {
        format!("{ui}/#/runs/{}", encode(r))
    } else if kind == EventKind::AgentLost {
        format!("{ui}/#/gpus")
    } else if kind == EventKind::Digest {
        format!("{ui}/#/usage")
    } else {
        format!("{ui}/#/")
    }
}

/// Percent-encode what is not unreserved (a run id in a URL fragment).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The message of an event.
pub fn message(ui: &str, kind: EventKind, e: &Event) -> Message {
    let job = e.job.map(|j| j.to_string()).unwrap_or_default();
    let name = e
        .name
        .as_deref()
        .map(|n| format!(": {}", one_line(n)))
        .unwrap_or_default();
    let agent = e.agent.clone().unwrap_or_default();
    let title = match kind {
        EventKind::JobSucceeded => format!("Job {job} succeeded{name}"),
        EventKind::JobFailed => format!("Job {job} failed{name}"),
        EventKind::JobCancelled => format!("Job {job} cancelled{name}"),
        EventKind::JobLost => format!("Job {job} lost{name}"),
        EventKind::IdleWarned => format!("Job {job} has idle GPUs{name}"),
        EventKind::IdleStopped => format!("Job {job} stopped for idling{name}"),
        EventKind::ScheduleFired => format!("Schedule fired{name}"),
        EventKind::ScheduleMissed => format!("Schedule missed{name}"),
        EventKind::WandbSyncFailed => {
            format!("W&B sync of run {} failed", e.run.as_deref().unwrap_or("?"))
        }
        EventKind::AgentLost => format!("Agent {agent} lost"),
        EventKind::DiskLow => "Disk space low".to_string(),
        EventKind::Test => "Test notification from Trainyard".to_string(),
        EventKind::Digest => match &e.digest {
            Some(d) => format!(
                "{} digest {}: {}",
                match d.period.every {
                    super::digest::Every::Daily => "Daily",
                    super::digest::Every::Weekly => "Weekly",
                },
                d.period.label,
                d.counts.headline()
            ),
            None => "Digest".to_string(),
        },
    };
    let mut facts = Vec::new();
    let mut fact = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            facts.push((k.to_string(), v));
        }
    };
    fact("user", e.user.clone());
    fact("project", e.project.clone());
    fact("tags", (!e.tags.is_empty()).then(|| e.tags.join(", ")));
    fact("exit code", e.exit_code.map(|c| c.to_string()));
    fact("attempt", e.attempt.map(|c| c.to_string()));
    if kind != EventKind::AgentLost {
        fact("host", e.agent.clone());
    }
    fact("GPUs", e.gpus.filter(|g| *g > 0).map(|g| g.to_string()));
    fact("GPU-hours", e.gpu_hours.map(|h| format!("{h:.2}")));
    fact("run time", e.runtime_s.map(duration));
    if let Some(d) = &e.digest {
        let c = &d.counts;
        fact("succeeded", Some(c.succeeded.to_string()));
        fact("failed", Some(c.failed.to_string()));
        fact("cancelled", Some(c.cancelled.to_string()));
        fact("lost", (c.lost > 0).then(|| c.lost.to_string()));
        fact("stopped for idling", Some(c.idle_stopped.to_string()));
        fact("GPU-hours allocated", Some(format!("{:.2}", c.gpu_hours)));
        fact("GPU-hours used", Some(format!("{:.2}", c.used_gpu_hours)));
        fact("GPU-hours idle", Some(format!("{:.2}", c.idle_gpu_hours)));
    }
    Message {
        title,
        facts,
        detail: e.detail.clone(),
        link: link(ui, kind, e),
        alarm: kind.is_alarm(),
    }
}

/// `1h 02m`, `3m 04s`, `12s`.
fn duration(s: u64) -> String {
    if s >= 3600 {
        format!("{}h {:02}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `s` cut to at most `max` characters, ending in `…` when cut.
pub fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// `s` cut to at most `max` bytes at a character boundary, ending in `…`
/// when cut.
pub fn clip_bytes(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Slack mrkdwn escaping: `&`, `<`, `>` are the only control characters.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Escape, then clip to `max` characters without cutting an entity.
fn slack_text(s: &str, max: usize) -> String {
    let escaped = slack_escape(s);
    if escaped.chars().count() <= max {
        return escaped;
    }
    let mut out: String = escaped.chars().take(max.saturating_sub(1)).collect();
    if let Some(amp) = out.rfind('&') {
        if !out[amp..].contains(';') {
            out.truncate(amp);
        }
    }
    out.push('…');
    out
}

/// The facts as `key: value` lines.
fn fact_lines(m: &Message) -> String {
    m.facts
        .iter()
        .map(|(k, v)| format!("{k}: {}", one_line(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The plain-text body: the facts, then the detail.
pub fn plain_body(m: &Message) -> String {
    let mut b = fact_lines(m);
    if let Some(d) = &m.detail {
        if !b.is_empty() {
            b.push('\n');
        }
        b.push_str(d);
    }
    b
}

/// The JSON body a sink of `kind` is sent (for ntfy, to the server's root
/// URL: see [`ntfy_target`]). `id` is the event's id and `created_ns` its
/// time; the generic webhook carries them, and the event's facts, as is.
pub fn payload(
    kind: SinkKind,
    id: i64,
    created_ns: i64,
    ekind: EventKind,
    event: &Event,
    m: &Message,
    ntfy: Option<(&str, Option<u8>)>,
) -> Value {
    match kind {
        SinkKind::Webhook | SinkKind::Desktop => json!({
            "id": id,
            "kind": ekind.as_str(),
            "created_ns": created_ns,
            "title": m.title,
            "text": plain_body(m),
            "link": m.link,
            "event": event,
        }),
        SinkKind::Slack => slack(m),
        SinkKind::Discord => discord(m),
        SinkKind::Ntfy => {
            let (topic, priority) = ntfy.unwrap_or(("", None));
            json!({
                "topic": topic,
                "title": clip(&m.title, 250),
                "message": clip_bytes(&plain_body(m), NTFY_MESSAGE_BYTES),
                "priority": priority.unwrap_or(if m.alarm { 4 } else { 3 }).clamp(1, 5),
                "click": m.link,
                "tags": [if m.alarm { "warning" } else { "white_check_mark" }],
            })
        }
    }
}

fn slack(m: &Message) -> Value {
    let facts = m
        .facts
        .iter()
        .map(|(k, v)| format!("*{}:* {}", slack_escape(k), slack_escape(&one_line(v))))
        .collect::<Vec<_>>()
        .join("\n");
    let mut blocks = vec![json!({
        "type": "header",
        "text": {"type": "plain_text", "text": clip(&m.title, SLACK_HEADER)},
    })];
    if !facts.is_empty() {
        blocks.push(json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": clip(&facts, SLACK_SECTION)},
        }));
    }
    if let Some(d) = &m.detail {
        // In a code block; the fences count towards the section's limit.
        let body = slack_text(d, SLACK_SECTION - 8);
        blocks.push(json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": format!("```\n{body}\n```")},
        }));
    }
    blocks.push(json!({
        "type": "section",
        "text": {"type": "mrkdwn", "text": format!("<{}|Open in Trainyard>", m.link)},
    }));
    json!({
        // The notification's fallback text.
        "text": slack_text(&m.title, SLACK_SECTION),
        "blocks": blocks,
    })
}

fn discord(m: &Message) -> Value {
    let title = clip(&m.title, DISCORD_TITLE);
    let fields: Vec<(String, String)> = m
        .facts
        .iter()
        .take(25)
        .map(|(k, v)| (clip(k, 256), clip(&one_line(v), DISCORD_FIELD)))
        .collect();
    let footer = "Trainyard";
    let used = title.chars().count()
        + footer.len()
        + fields
            .iter()
            .map(|(k, v)| k.chars().count() + v.chars().count())
            .sum::<usize>();
    let room = DISCORD_EMBED_TOTAL
        .saturating_sub(used)
        .min(DISCORD_DESCRIPTION);
    let description = m
        .detail
        .as_deref()
        .map(|d| clip(d, room))
        .unwrap_or_default();
    json!({
        "content": clip(&m.title, DISCORD_CONTENT),
        // Never ping @everyone or a role because a job name says so.
        "allowed_mentions": {"parse": []},
        "embeds": [{
            "title": title,
            "url": m.link,
            "description": description,
            "color": if m.alarm { 0xd9_3025 } else { 0x2e_a043 },
            "fields": fields
                .iter()
                .map(|(k, v)| json!({"name": k, "value": v, "inline": true}))
                .collect::<Vec<_>>(),
            "footer": {"text": footer},
        }],
    })
}

/// Where an ntfy message is posted and on which topic: an ntfy topic URL
/// `https://HOST[/PREFIX]/TOPIC` is published to as JSON at
/// `https://HOST[/PREFIX]/` with `"topic": TOPIC`.
pub fn ntfy_target(topic_url: &str) -> Option<(String, String)> {
    let u = reqwest::Url::parse(topic_url.trim()).ok()?;
    let path = u.path().trim_end_matches('/');
    let (prefix, topic) = path.rsplit_once('/')?;
    if topic.is_empty() {
        return None;
    }
    let mut root = u.clone();
    root.set_path(&format!("{prefix}/"));
    root.set_query(None);
    Some((root.to_string(), topic.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::JobId;

    fn long_event() -> Event {
        Event {
            job: Some(JobId(12)),
            name: Some("train <detr> & friends ".repeat(40)),
            user: Some("ana".into()),
            project: Some("detr".into()),
            tags: vec!["big".into()],
            exit_code: Some(3),
            agent: Some("gpu1".into()),
            gpus: Some(2),
            gpu_hours: Some(2.125),
            runtime_s: Some(3725),
            detail: Some("Traceback & <stuff>\n".repeat(2000)),
            ..Event::default()
        }
    }

    fn chars(v: &Value) -> usize {
        v.as_str().unwrap().chars().count()
    }

    #[test]
    fn slack_stays_within_its_limits_and_escapes() {
        let e = long_event();
        let m = message("http://h:7171/", EventKind::JobFailed, &e);
        assert_eq!(m.link, "http://h:7171/#/queue/12");
        let p = payload(SinkKind::Slack, 1, 0, EventKind::JobFailed, &e, &m, None);
        let blocks = p["blocks"].as_array().unwrap();
        assert!(chars(&blocks[0]["text"]["text"]) <= SLACK_HEADER);
        for b in &blocks[1..] {
            let t = b["text"]["text"].as_str().unwrap();
            assert!(t.chars().count() <= SLACK_SECTION, "{}", t.len());
            // No raw control characters but the link's own.
            if !t.starts_with("<http") {
                assert!(!t.contains('<') && !t.contains('>'), "{t}");
                // No entity cut in half.
                assert!(!t.contains("&am…") && !t.contains("&l…"), "{t}");
            }
        }
        assert!(chars(&p["text"]) <= SLACK_SECTION);
        assert!(blocks
            .iter()
            .any(|b| b["text"]["text"] == "<http://h:7171/#/queue/12|Open in Trainyard>"));
    }

    #[test]
    fn discord_stays_within_its_limits_and_pings_nobody() {
        let e = long_event();
        let m = message("http://h:7171", EventKind::JobFailed, &e);
        let p = payload(SinkKind::Discord, 1, 0, EventKind::JobFailed, &e, &m, None);
        assert!(chars(&p["content"]) <= DISCORD_CONTENT);
        assert_eq!(p["allowed_mentions"]["parse"], json!([]));
        let emb = &p["embeds"][0];
        assert!(chars(&emb["title"]) <= DISCORD_TITLE);
        assert!(chars(&emb["description"]) <= DISCORD_DESCRIPTION);
        let mut total = chars(&emb["title"]) + chars(&emb["description"]);
        total += chars(&emb["footer"]["text"]);
        for f in emb["fields"].as_array().unwrap() {
            assert!(chars(&f["value"]) <= DISCORD_FIELD);
            total += chars(&f["name"]) + chars(&f["value"]);
        }
        assert!(total <= DISCORD_EMBED_TOTAL, "{total}");
        assert!(chars(&emb["description"]) > 1000, "the room left is used");
        assert_eq!(emb["url"], "http://h:7171/#/queue/12");
    }

    #[test]
    fn ntfy_posts_json_to_the_root_with_topic_priority_and_click() {
        assert_eq!(
            ntfy_target("https://ntfy.sh/lab-jobs").unwrap(),
            ("https://ntfy.sh/".into(), "lab-jobs".into())
        );
        assert_eq!(
            ntfy_target("http://127.0.0.1:9/prefix/t1/").unwrap(),
            ("http://127.0.0.1:9/prefix/".into(), "t1".into())
        );
        assert!(ntfy_target("https://ntfy.sh/").is_none());
        let e = long_event();
        let m = message("http://h:7171", EventKind::JobFailed, &e);
        let p = payload(
            SinkKind::Ntfy,
            1,
            0,
            EventKind::JobFailed,
            &e,
            &m,
            Some(("lab-jobs", None)),
        );
        assert_eq!(p["topic"], "lab-jobs");
        assert_eq!(p["priority"], 4);
        assert_eq!(p["click"], "http://h:7171/#/queue/12");
        assert!(p["message"].as_str().unwrap().len() <= NTFY_MESSAGE_BYTES);
        let ok = Event {
            job: Some(JobId(1)),
            ..Event::default()
        };
        let m = message("http://h", EventKind::JobSucceeded, &ok);
        let p = payload(
            SinkKind::Ntfy,
            1,
            0,
            EventKind::JobSucceeded,
            &ok,
            &m,
            Some(("t", Some(9))),
        );
        assert_eq!(p["priority"], 5, "clamped");
    }

    #[test]
    fn clipping_counts_characters_and_bytes() {
        assert_eq!(clip("héllo", 5), "héllo");
        assert_eq!(clip("héllo", 4), "hél…");
        let s = clip_bytes("ééééé", 7);
        assert!(s.len() <= 7 && s.ends_with('…'), "{s}");
        assert_eq!(duration(3725), "1h 02m");
        assert_eq!(duration(65), "1m 05s");
    }
}
