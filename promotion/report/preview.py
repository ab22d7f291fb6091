"""`promote policy preview`: the replay as text, as a job-summary section, and as JSON."""

from __future__ import annotations

from promotion.engine.preview import Preview
from promotion.report.text import SCHEMA_VERSION, code, dumps, grid, md


def _header(p: Preview) -> list[str]:
    base = "none (a new policy)" if p.base_missing else p.base_label
    return [f"policy {p.head_path} (model {p.model}, @{p.alias} = {p.holder})",
            f"base   {base}",
            f"replayed over the last {len(p.rows)} of up to {p.last} versions, "
            f"each against @{p.alias} as it is now (read-only)"]


def _verdict(p: Preview) -> str:
    if not p.rows:
        return "nothing to replay"
    if p.base_missing or all(r.base is None for r in p.rows):
        return f"{len(p.rows)} new decisions (no previous policy)"
    changed = len(p.changed)
    if not changed:
        return f"no decision changes ({len(p.rows)} versions replayed)"
    return f"{changed} of {len(p.rows)} decisions change"


def render_text(p: Preview) -> str:
    lines = _header(p)
    lines += [f"note   {note}" for note in p.notes]
    if p.not_replayed:
        lines.append(f"note   not replayed (need re-scoring; the gate applies them): "
                     f"{', '.join(p.not_replayed)}")
    lines.append("")
    if p.rows:
        lines += grid(("version", "base", "head", "change", "why"),
                      [(r.version, r.base.outcome if r.base else "-", r.head.outcome, r.change,
                        r.why) for r in p.rows])
        lines.append("")
    lines.append(_verdict(p))
    return "\n".join(lines)


def render_markdown(p: Preview) -> str:
    """A section for the job summary of a pull request."""
    base = "none: a new policy file" if p.base_missing else code(p.base_label)
    lines = [f"### Policy preview: {code(p.head_path)}", "",
             f"Model {code(p.model)}, {code('@' + p.alias)} = {p.holder}. Base policy: "
             f"{base}. Each of the last {len(p.rows)} versions (of up to {p.last}) is decided "
             f"under both policies against {code('@' + p.alias)} as it is now; nothing is "
             "written.", ""]
    lines += [f"> {md(note)}" for note in p.notes]
    if p.not_replayed:
        lines.append(f"> Not replayed (they need re-scoring; the gate applies them): "
                     f"{md(', '.join(p.not_replayed))}")
    if p.notes or p.not_replayed:
        lines.append("")
    lines += [f"**{_verdict(p)}**", ""]
    if p.rows:
        lines += ["| version | base | head | change | why |", "|---:|---|---|---|---|"]
        for r in p.rows:
            head = f"**{r.head.outcome}**" if r.change == "changed" else r.head.outcome
            change = f"**{r.change}**" if r.change == "changed" else r.change
            lines.append(f"| {r.version} | {r.base.outcome if r.base else '–'} | {head} | "
                         f"{change} | {md(r.why)} |")
        lines.append("")
    return "\n".join(lines)


def render_json(p: Preview) -> str:
    return dumps({"schema_version": SCHEMA_VERSION, **p.to_dict()}, sort_keys=True,
                 ascii_only=True)


RENDERERS = {"text": render_text, "markdown": render_markdown, "json": render_json}
