"""Jailbreak templates: the file format and its loader.

Used by the static-template attacker of the game (`game.attacker: static`) and by the `template`
attack of the evaluation, so the game owns them and the evaluation imports them (no import circle).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path


@dataclass(frozen=True)
class JailbreakTemplate:
    name: str
    text: str

    def apply(self, goal: str) -> str:
        return self.text.replace("{goal}", goal)


class TemplateError(ValueError):
    pass


def parse_templates(text: str, source: str = "<templates>") -> list[JailbreakTemplate]:
    """The template file format (see ssp/data/jailbreak_templates.txt): `##` header lines, then templates
    each preceded by a line `---` and starting with `# name: <id>`; `{goal}` exactly once in each."""
    lines = text.splitlines()
    try:
        first = next(i for i, line in enumerate(lines) if line.strip() == "---")
    except StopIteration:
        raise TemplateError(f"{source}: no template (templates are preceded by a line '---')") from None
    for i, line in enumerate(lines[:first]):
        if line.strip() and not line.startswith("##"):
            raise TemplateError(f"{source}: line {i + 1}: header lines before the first '---' must start with '##'")
    blocks: list[tuple[int, list[str]]] = []
    for i, line in enumerate(lines[first:], start=first):
        if line.strip() == "---":
            blocks.append((i + 2, []))
        else:
            blocks[-1][1].append(line)
    templates: list[JailbreakTemplate] = []
    for start, block in blocks:
        while block and not block[0].strip():
            block.pop(0)
            start += 1
        if not block:
            continue
        head = block[0].strip()
        if not head.startswith("# name:"):
            raise TemplateError(f"{source}: line {start}: a template must start with '# name: <id>'")
        name = head[len("# name:") :].strip()
        body = "\n".join(block[1:]).strip()
        if not name:
            raise TemplateError(f"{source}: line {start}: empty template name")
        if body.count("{goal}") != 1:
            raise TemplateError(
                f"{source}: template {name!r}: the placeholder {{goal}} must appear exactly once "
                f"(found {body.count('{goal}')})"
            )
        if any(t.name == name for t in templates):
            raise TemplateError(f"{source}: template name {name!r} used twice")
        templates.append(JailbreakTemplate(name, body))
    if not templates:
        raise TemplateError(f"{source}: no template found")
    return templates


def load_templates(path: str | Path | None = None) -> list[JailbreakTemplate]:
    if path is None:
        text = (resources.files("ssp") / "data" / "jailbreak_templates.txt").read_text(encoding="utf-8")
        return parse_templates(text, "<packaged jailbreak_templates.txt>")
    p = Path(path)
    if not p.is_file():
        raise TemplateError(f"template file not found: {p}")
    return parse_templates(p.read_text(encoding="utf-8"), str(p))
