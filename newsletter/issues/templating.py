"""Find and load Jinja templates: the organisation's folder first, then the built-ins.

An organisation overrides one file (say `subject.txt`) by putting it in
NEWSLETTER_TEMPLATES_DIR; every other template still comes from the copy
shipped with the package. Template mistakes become a one-line TemplateError,
so `newsletter send` fails cleanly before anything is recorded or sent.

    builtin_templates_dir() -> Path
    template_env(settings) -> jinja2.Environment
    render_template(settings, name, context) -> str
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

from newsletter.config import Settings
from newsletter.errors import TemplateError

# Errors a template author can cause inside an expression ({{ 1 + "a" }}, stories[99]...).
_AUTHOR_ERRORS = (jinja2.TemplateError, TypeError, ValueError, ArithmeticError, LookupError)


def builtin_templates_dir() -> Path:
    """The shipped templates: inside the package in a wheel, the repo's top level otherwise."""
    package = Path(__file__).resolve().parents[1]  # newsletter/
    packaged = package / "templates"  # the wheel force-includes templates/ here
    if packaged.is_dir():
        return packaged
    return package.parent / "templates"


def template_env(settings: Settings) -> jinja2.Environment:
    """The shared Environment for `settings.templates_dir` (built once, reused by web pages)."""
    return _env_for(str(Path(settings.templates_dir).expanduser().resolve()))


@lru_cache(maxsize=8)
def _env_for(templates_dir: str) -> jinja2.Environment:
    loaders: list[jinja2.BaseLoader] = [jinja2.FileSystemLoader(templates_dir)]
    builtin = builtin_templates_dir().resolve()
    if str(builtin) != templates_dir:
        loaders.append(jinja2.FileSystemLoader(str(builtin)))
    return jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        autoescape=jinja2.select_autoescape(
            enabled_extensions=("html", "htm", "xml"),
            disabled_extensions=("txt", "css"),
            default_for_string=False,
            default=False,
        ),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_template(settings: Settings, name: str, context: Mapping[str, Any]) -> str:
    """Render template `name`; any template mistake becomes a one-line TemplateError."""
    env = template_env(settings)
    try:
        return env.get_template(name).render(**context)
    except jinja2.TemplateNotFound as exc:
        raise TemplateError(
            f"Template {name!r} not found"
            + (f" (missing {exc.name!r})" if exc.name and exc.name != name else "")
            + f" in {settings.templates_dir} or the built-in templates"
        ) from None
    except jinja2.TemplateSyntaxError as exc:
        where = exc.filename or exc.name or name
        raise TemplateError(
            _one_line(
                f"Template {name!r}: syntax error in {where}, line {exc.lineno}: {exc.message}"
            )
        ) from None
    except _AUTHOR_ERRORS as exc:
        kind = "undefined value" if isinstance(exc, jinja2.UndefinedError) else type(exc).__name__
        raise TemplateError(
            _one_line(f"Template {name!r} failed to render ({kind}): {exc}")
        ) from None


def _one_line(message: str) -> str:
    return " ".join(message.split())
