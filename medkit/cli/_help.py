"""How `--help` is laid out, decided in one place: which panel a rarely used option goes to, and the env-var note.

`main.MedkitCommand` applies this to every command, so a command module declares its options plainly and a new
option lands in the main panel until it is listed here.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PANELS", "apply_help_layout", "env_note", "task_defaults"]

_AUGMENT = "Augmentation"
_SPEED = "Speed and precision"
_DATA = "Data table"
_CONTEXT = "2.5D input (CT series)"

# command -> {flag: panel}. An option that already names its panel keeps it.
PANELS: dict[str, dict[str, str]] = {
    "train": {
        "--image-col": _DATA,
        "--mask-col": _DATA,
        "--competition": _DATA,
        "--context": _CONTEXT,
        "--context-mode": _CONTEXT,
        "--mixup": _AUGMENT,
        "--cutmix": _AUGMENT,
        "--no-augment": _AUGMENT,
        "--ema": "Model and optimisation",
        "--ema-decay": "Model and optimisation",
        "--grad-clip": "Model and optimisation",
        "--amp": _SPEED,
        "--amp-dtype": _SPEED,
        "--compile": _SPEED,
        "--feed": _SPEED,
        "--workers": _SPEED,
    },
}


def env_note(prefix: str) -> str:
    """The one line that replaces an `[env var: ...]` note under every option."""
    return (
        f"Every option can also be set by an environment variable named after it: {prefix}_<OPTION> "
        f"(--batch-size -> {prefix}_BATCH_SIZE); shared ones are MEDKIT_DEVICE, MEDKIT_SEED, MEDKIT_OUT, ..."
    )


def task_defaults() -> str:
    """One line per task preset of what `medkit train TASK` uses unless told otherwise."""
    from medkit.registries import TASKS

    parts = []
    for name in TASKS.names():
        task = TASKS.create(name)
        parts.append(f"{name}: {task.model}, {task.img_size} px, {task.epochs} epochs, lr {task.lr:g}")
    return "Task defaults (override with --model, --img-size, --epochs, --lr): " + "; ".join(parts) + "."


def apply_help_layout(command: Any, name: str) -> None:
    """Put listed options in their panels and show the environment variables once, in the epilog."""
    panels = PANELS.get(name, {})
    has_env = False
    for param in command.params:
        if param.param_type_name != "option":
            continue
        has_env = has_env or bool(param.envvar)
        param.show_envvar = False
        panel = next((panels[o] for o in param.opts if o in panels), None)
        if panel and getattr(param, "rich_help_panel", None) is None:
            param.rich_help_panel = panel
    if name == "train":
        command.epilog = f"{command.epilog}\n\n{task_defaults()}" if command.epilog else task_defaults()
    if has_env:
        note = env_note(f"MEDKIT_{name.upper().replace('-', '_')}")
        command.epilog = f"{command.epilog}\n\n{note}" if command.epilog else note
