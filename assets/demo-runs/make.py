# Makes the demo's wandb runs with the real client, offline.
import math, random, wandb
random.seed(7)
for i, (name, lr) in enumerate([("baseline lr=1e-3", 1e-3), ("lr=3e-4", 3e-4), ("lr=1e-2 (diverges)", 1e-2)]):
    run = wandb.init(project="trainyard-demo", name=name, id=f"demo{i+1:04d}", mode="offline",
                     config={"lr": lr, "batch_size": 64, "model": "resnet18"},
                     settings=wandb.Settings(x_disable_stats=True, console="off", save_code=False, disable_git=True))
    loss = 2.3
    for step in range(200):
        if lr > 5e-3 and step > 120:
            loss *= 1.04
        else:
            loss = loss * (1 - lr * 3) + random.uniform(-0.01, 0.01)
        run.log({"train/loss": loss, "train/acc": max(0.0, min(1.0, 1 - loss / 2.5)), "lr": lr * (0.5 * (1 + math.cos(math.pi * step / 200)))}, step=step)
    run.summary["best_acc"] = max(0.0, 1 - loss / 2.5)
    run.finish(exit_code=1 if lr > 5e-3 else 0)
