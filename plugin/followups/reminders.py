"""``ReminderRenderer``: the Jinja templates that turn notifications into ``<system-reminder>``
text, and the relay's footers, with untrusted task text neutralized for every template."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import jinja2

from .errors import TemplateError
from .state import TaskNotification, TaskState, TaskStatus

__all__ = ["TEMPLATE_NAMES", "RenderedReminder", "ReminderItem", "ReminderRenderer", "default_template_dir"]

FOLLOWUP_TEMPLATE = "followup.j2"
PROMPT_TEMPLATE = "prompt.j2"
RELAY_FOOTER_TEMPLATE = "relay_footer.j2"
RELAY_UNSAVED_TEMPLATE = "relay_unsaved.j2"
TEMPLATE_NAMES = (FOLLOWUP_TEMPLATE, PROMPT_TEMPLATE, RELAY_FOOTER_TEMPLATE, RELAY_UNSAVED_TEMPLATE)

# Untrusted text can never open or close a block of this name, whatever the templates say.
_ALWAYS_NEUTRALIZED_TAGS = frozenset({"system-reminder"})
_TAG_IN_TEMPLATE = re.compile(r"<\s*/?\s*([A-Za-z][A-Za-z0-9_.:-]*)")


def default_template_dir() -> Path:
    """The directory of the default templates.

    Inside an installed wheel they sit in the package (``followups/templates``); in a source
    checkout they are the project's top-level ``templates/``.
    """
    package_dir = Path(__file__).resolve().parent
    installed = package_dir / "templates"
    if installed.is_dir():
        return installed
    return package_dir.parent.parent / "templates"


class ReminderItem(NamedTuple):
    """What a reminder template sees of one notification: ``id``, ``status`` and ``text``,
    each already neutralized."""

    id: str
    status: str
    text: str


_STATUS_TEXT = {status: status.value for status in TaskStatus}


@dataclass(frozen=True, slots=True)
class RenderedReminder:
    """A rendered reminder and how many of the offered notifications it carries (a prefix)."""

    text: str
    delivered: int


class ReminderRenderer:
    """Renders reminders and relay footers from Jinja templates.

    Templates are looked up by name, first in ``template_dir`` (when given), then among the
    defaults, so a user overrides any template by giving a file of the same name. Every
    template is compiled and trial-rendered here: a syntax error or an unknown variable raises
    :class:`TemplateError` naming the file (and line, for syntax errors) now, not at the first
    notification.

    Task ids and texts are untrusted. Before any template sees them, every opening or closing
    tag named ``system-reminder``, or named like a tag that appears literally in the loaded
    templates, has its ``<`` replaced by ``&lt;``. Templates only ever receive these
    neutralized strings, so no task output can close the reminder block and put text outside
    it, whatever a template does with them short of deliberately undoing the replacement.

    Rendering is pure and holds no lock: one renderer may be shared by any threads and tasks.
    """

    def __init__(self, template_dir: str | Path | None = None) -> None:
        default_dir = default_template_dir()
        search_path = [default_dir]
        if template_dir is not None:
            template_dir = Path(template_dir).expanduser()
            if not template_dir.is_dir():
                raise TemplateError(f"template_dir {str(template_dir)!r} is not a directory")
            search_path.insert(0, template_dir)
        self.template_dir = template_dir
        self._env = jinja2.Environment(
            loader=jinja2.FileSystemLoader([str(path) for path in search_path]),
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
        )
        names = set(TEMPLATE_NAMES)
        if template_dir is not None:
            names.update(path.name for path in template_dir.glob("*.j2"))
        self._templates = {name: self._compile(name) for name in sorted(names)}
        self._tag_pattern = _tag_pattern(_ALWAYS_NEUTRALIZED_TAGS | self._literal_tags(names))
        self._trial_render()

    def neutralize(self, text: str) -> str:
        """``text`` with every reminder-like opening or closing tag defused (``<`` → ``&lt;``)."""
        if "<" not in text:
            return text
        return self._tag_pattern.sub("&lt;", text)

    def render_followup(self, notifications: Sequence[TaskNotification], *, remaining: int = 0) -> str:
        """The follow-up message for ``notifications``; ``remaining`` counts those held back."""
        return self._templates[FOLLOWUP_TEMPLATE].render(
            tasks=self._items(notifications), remaining=remaining
        )

    def render_prompt(
        self, notifications: Sequence[TaskNotification], prompt: str, *, remaining: int = 0
    ) -> str:
        """``prompt`` with the reminder for ``notifications`` prepended. The prompt is the user's
        own text and is kept verbatim."""
        return self._templates[PROMPT_TEMPLATE].render(
            tasks=self._items(notifications), prompt=prompt, remaining=remaining
        )

    def fit_followup(
        self, notifications: Sequence[TaskNotification], budget_chars: int, *, more: int = 0
    ) -> RenderedReminder:
        """The follow-up message for the longest prefix of ``notifications`` that fits in
        ``budget_chars``; the first notification is always carried, so delivery progresses.
        ``more`` counts notifications pending beyond those offered, for the "still to come" line."""
        return _fit(
            lambda batch, rest: self.render_followup(batch, remaining=rest), notifications, budget_chars, 0, more
        )

    def fit_prompt(
        self, notifications: Sequence[TaskNotification], prompt: str, budget_chars: int, *, more: int = 0
    ) -> RenderedReminder:
        """Like :meth:`fit_followup` for the prepended form; the prompt does not count."""
        return _fit(
            lambda batch, rest: self.render_prompt(batch, prompt, remaining=rest),
            notifications,
            budget_chars,
            len(prompt),
            more,
        )

    def render_relay_footer(self, *, path: Path, lines: int, size_bytes: int) -> str:
        """The footer under a relayed output's preview: where the whole text is, and how to read it."""
        return self._templates[RELAY_FOOTER_TEMPLATE].render(
            path=str(path), lines=lines, bytes=size_bytes
        )

    def render_relay_unsaved(self, *, lines: int, size_bytes: int, error: str) -> str:
        """The footer under an output that should have been relayed but could not be saved."""
        return self._templates[RELAY_UNSAVED_TEMPLATE].render(
            lines=lines, bytes=size_bytes, error=error
        )

    def _items(self, notifications: Iterable[TaskNotification]) -> list[ReminderItem]:
        neutralize = self._tag_pattern.sub
        items = []
        for notification in notifications:
            id, state = notification.id, notification.state
            text = state.text
            items.append(
                ReminderItem(
                    id if "<" not in id else neutralize("&lt;", id),
                    _STATUS_TEXT[state.status],
                    text if "<" not in text else neutralize("&lt;", text),
                )
            )
        return items

    def _compile(self, name: str) -> jinja2.Template:
        try:
            return self._env.get_template(name)
        except jinja2.TemplateSyntaxError as exc:
            where = exc.filename or name
            raise TemplateError(
                f"template {where}, line {exc.lineno}: {exc.message}", filename=where, lineno=exc.lineno
            ) from exc
        except jinja2.TemplateNotFound as exc:
            raise TemplateError(f"template {name!r} was not found in {self._search_path()}") from exc

    def _literal_tags(self, names: Iterable[str]) -> set[str]:
        """Tag names written literally in the templates' text (outside Jinja expressions)."""
        tags: set[str] = set()
        loader = self._env.loader
        assert loader is not None
        for name in names:
            source, _, _ = loader.get_source(self._env, name)
            for _, token_type, value in self._env.lex(source):
                if token_type == "data":
                    tags.update(match.group(1).lower() for match in _TAG_IN_TEMPLATE.finditer(value))
        return tags

    def _trial_render(self) -> None:
        sample = [
            TaskNotification("t1", TaskState.completed("result")),
            TaskNotification("t2", TaskState.failed("error")),
            TaskNotification("t3", TaskState.cancelled("reason")),
        ]
        trials: dict[str, Callable[[], str]] = {
            FOLLOWUP_TEMPLATE: lambda: self.render_followup(sample, remaining=1),
            PROMPT_TEMPLATE: lambda: self.render_prompt(sample, "prompt", remaining=1),
            RELAY_FOOTER_TEMPLATE: lambda: self.render_relay_footer(
                path=Path("/relay/output.txt"), lines=1, size_bytes=1
            ),
            RELAY_UNSAVED_TEMPLATE: lambda: self.render_relay_unsaved(lines=1, size_bytes=1, error="error"),
        }
        for name, render in trials.items():
            try:
                render()
            except jinja2.TemplateError as exc:
                filename = self._templates[name].filename or name
                raise TemplateError(f"template {filename} failed to render: {exc}", filename=filename) from exc

    def _search_path(self) -> str:
        loader = self._env.loader
        assert isinstance(loader, jinja2.FileSystemLoader)
        return ", ".join(loader.searchpath)


def _tag_pattern(tags: Iterable[str]) -> re.Pattern[str]:
    names = "|".join(re.escape(tag) for tag in sorted(tags, key=len, reverse=True))
    return re.compile(rf"<(?=\s*/?\s*(?:{names})(?![A-Za-z0-9_.:-]))", re.IGNORECASE)


def _fit(
    render: Callable[[Sequence[TaskNotification], int], str],
    notifications: Sequence[TaskNotification],
    budget_chars: int,
    overhead: int,
    more: int = 0,
) -> RenderedReminder:
    """Render the longest prefix of ``notifications`` whose text (less ``overhead``) fits;
    the reminder counts the rest, plus ``more``, as still to come."""
    total = len(notifications)
    text = render(notifications, more)
    if total <= 1 or len(text) - overhead <= budget_chars:
        return RenderedReminder(text, total)
    best = RenderedReminder(render(notifications[:1], total - 1 + more), 1)
    low, high = 2, total - 1
    while low <= high:
        middle = (low + high) // 2
        candidate = render(notifications[:middle], total - middle + more)
        if len(candidate) - overhead <= budget_chars:
            best = RenderedReminder(candidate, middle)
            low = middle + 1
        else:
            high = middle - 1
    return best
