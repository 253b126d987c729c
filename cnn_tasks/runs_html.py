"""The reports plugin's pages as HTML (templates in templates/runs/): the runs page, a run's folder
with its files grouped by stage, two runs compared, and error pages that say what to do. Times read
'2026-12-04 12:51 UTC' and metrics three decimals everywhere."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import quote

import jinja2

from cnn_tasks.runs_page import CHART_H, CHART_W, compare_choice
from cnn_tasks.runs_problems import Problem


def readable_time(value) -> str:
    """One format for every time on the pages: '2026-12-04 12:51 UTC'. Takes datetimes, ISO
    strings and the compact stamps of champion records ('20261204T125101730963Z')."""
    if value in (None, ""):
        return "–"
    when = value if isinstance(value, datetime) else None
    text = str(value).strip()
    for layout in ("%Y%m%dT%H%M%S%fZ", "%Y%m%dT%H%M%SZ"):
        if when is None:
            try:
                when = datetime.strptime(text, layout).replace(tzinfo=UTC)
            except ValueError:
                pass
    if when is None:
        try:
            when = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return text  # not a time after all: shown as written
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _metric(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "–"


PAGES = jinja2.Environment(
    loader=jinja2.PackageLoader("cnn_tasks", "templates/runs"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
PAGES.filters["metric"] = _metric
PAGES.filters["when"] = readable_time


def render(template: str, **values) -> str:
    """One page of templates/runs/ filled in."""
    return PAGES.get_template(template).render(**values)


def index_html(rows: list[dict], champion_rows: list[dict], base: str, store_uri: str) -> str:
    """The runs page: champions with their charts, the compare form and the runs of the store."""
    return render(
        "index.html",
        title="CNN pipeline runs",
        rows=rows,
        champions=champion_rows,
        chart={"w": CHART_W, "h": CHART_H},
        base=base,
        store_uri=store_uri,
        pick=compare_choice(rows),
    )


def compare_html(comparison: dict, base: str) -> str:
    """Two runs side by side (runs_compare.compare_runs)."""
    return render("compare.html", title=f"{comparison['a']} against {comparison['b']}", base=base, c=comparison)


# A run's top folders in pipeline order; under these, one section per model or experiment.
STAGES = ("data", "checks", "models", "viz", "eval", "reuse", "report", "failures", "timings")
PER_MODEL = ("checks", "models", "viz", "eval")
OPEN_UP_TO = 30  # sections of a listing with at most this many files all start open; else only these:
ALWAYS_OPEN = ("", "report", "failures")  # the folder's own files, the report, what failed


def file_groups(keys: list[str], folder: str, base: str) -> list[dict]:
    """The files under `folder`, one folded section per subfolder (at a run's top: per stage, and
    per model or experiment under models/, viz/, eval/ and checks/); the folder's own files first."""
    at_run_top = folder.count("/") == 2  # runs/<id>/
    groups: dict[str, list[dict]] = {}
    for key in keys:
        name = key[len(folder) :]
        parts = name.split("/")
        depth = 2 if at_run_top and parts[0] in PER_MODEL and len(parts) > 2 else 1
        group = "/".join(parts[:depth]) if len(parts) > 1 else ""
        shown = name[len(group) + 1 :] if group else name
        groups.setdefault(group, []).append({"href": f"{base}/{quote(key)}", "name": shown})

    def order(group: str) -> tuple:
        top = group.split("/")[0]
        return (bool(group), STAGES.index(top) if top in STAGES else len(STAGES), group)

    return [
        {
            "name": group or "(this folder)",
            "href": f"{base}/{quote(folder + group)}/" if group else None,
            "files": files,
            "open": len(keys) <= OPEN_UP_TO or group in ALWAYS_OPEN,
        }
        for group, files in sorted(groups.items(), key=lambda item: order(item[0]))
    ]


def folder_html(key: str, keys: list[str], base: str, store: str | None) -> str:
    """The files under the folder `key` (`keys`, not empty), grouped; `store` named when the run's own."""
    return render(
        "folder.html",
        title=key,
        base=base,
        groups=file_groups(keys, key, base),
        count=len(keys),
        store=store,
    )


STATUS_TITLES = {
    400: "This address is not valid",
    403: "You may not open this page",
    404: "Not found",
    422: "This address is missing something",
    503: "The artifact store cannot be read",
}


def error_html(exc, base: str) -> str:
    """A page saying what went wrong and what to do: a Problem's own words, else the title of the
    HTTP error's status (`exc` has status_code and detail)."""
    if isinstance(exc, Problem):
        title, why, todo, facts = exc.title, exc.why, exc.todo, exc.facts
        failures, run_folder = exc.failures, exc.run_folder
    else:
        title = STATUS_TITLES.get(exc.status_code, f"Error {exc.status_code}")
        why, todo, facts, failures, run_folder = str(exc.detail), [], {}, [], None
    return render(
        "error.html",
        title=title,
        why=why,
        todo=todo,
        facts=facts,
        failures=failures,
        run_folder=run_folder,
        base=base,
        status=exc.status_code,
    )
