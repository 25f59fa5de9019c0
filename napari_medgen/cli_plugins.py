"""``medgen plugins``: list, install, upgrade and remove model-family packages; start a new one.

    medgen plugins list [--json]
    medgen plugins install SOURCE [--version V] [--find-links DIR] [--offline] [--yes] [--dry-run]
    medgen plugins upgrade NAME [--find-links DIR] [--offline] [--yes] [--dry-run]
    medgen plugins uninstall NAME [--yes]
    medgen plugins new NAME [--dir DIR] [--task TASK] [--overwrite]

The same protection as the Model families panel (:mod:`napari_medgen.installer`): the
package is read before anything is installed (no entry point in the group ``napari_medgen``:
refused), napari, napari-medgen, torch, numpy, qtpy and the Qt binding are pinned, and the
dry run's list of changes is shown and must be confirmed (``--yes`` skips the question;
without a terminal and without ``--yes`` nothing is installed).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .errors import EXIT_CANCELLED, EXIT_OK
from .family import Task

__all__ = ["add_parser", "cmd_plugins"]

HELP = """sources for install:
  NAME or NAME==VERSION     a package on the index (pip's configured index)
  path/to/pkg.whl           a wheel;  path/to/pkg.tar.gz  an sdist
  path/to/project/          a project folder (pyproject.toml), e.g. one made by `medgen plugins new`
  --find-links DIR          also look in a folder of wheels; with --offline only there (--no-index)
"""


def add_parser(sub: Any, epilog: str) -> None:
    plug = sub.add_parser(
        "plugins", help="list, install, upgrade or remove model-family packages; start a new one",
        description="Manage the packages that provide model families, in the Python environment medgen runs "
        "from. napari, napari-medgen, torch, numpy, qtpy and the Qt binding are never replaced.",
        epilog=HELP + "\n" + epilog, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    psub = plug.add_subparsers(dest="plugins_command", required=True)
    lst = psub.add_parser("list", help="installed packages that provide model families")
    lst.add_argument("--json", action="store_true", help="machine-readable output")

    def index_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--find-links", default="", metavar="DIR", help="a folder of wheels to look in")
        p.add_argument("--offline", action="store_true",
                       help="use only --find-links and local files (pip --no-index), for machines without internet")
        p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
        p.add_argument("--dry-run", action="store_true", help="only show what would change")

    ins = psub.add_parser("install", help="install a package that provides model families",
                          epilog=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    ins.add_argument("source", help="package name, wheel, sdist or project folder")
    ins.add_argument("--version", default="", help="the version of a package name")
    index_args(ins)
    up = psub.add_parser("upgrade", help="upgrade an installed family package")
    up.add_argument("name", help="the package (see `medgen plugins list`)")
    index_args(up)
    rm = psub.add_parser("uninstall", help="remove a family package (its families leave every dock)")
    rm.add_argument("name", help="the package (see `medgen plugins list`)")
    rm.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    new = psub.add_parser("new", help="write a new, installable family package to start from")
    new.add_argument("name", help="the distribution name, e.g. medgen-edge")
    new.add_argument("--dir", default=None, help="the folder to create (default: ./NAME)")
    new.add_argument("--task", default="anomaly", choices=[t.value for t in Task], help="the family's task")
    new.add_argument("--overwrite", action="store_true", help="write into a folder that is not empty")


def _confirm(plan, args: argparse.Namespace) -> bool:
    from .installer import InstallError

    print(plan.summary())
    if getattr(args, "dry_run", False):
        print("dry run: nothing was changed")
        return False
    if args.yes:
        return True
    if not sys.stdin.isatty():
        raise InstallError("nothing changed: confirm with --yes (there is no terminal to ask on)")
    answer = input("Proceed? [y/N] ").strip().lower()
    return answer in ("y", "yes")


def _log(quiet: bool):
    def log(line: str) -> None:
        if not quiet:
            print(line, file=sys.stderr)
    return log


def cmd_plugins(args: argparse.Namespace) -> int:
    from . import installer

    cmd = args.plugins_command
    if cmd == "list":
        return _list(args)
    if cmd == "new":
        from .starter import new_plugin

        made = new_plugin(args.name, args.dir, task=args.task, overwrite=args.overwrite,
                          hint="use --overwrite to write the plugin's files into it")
        print(f"wrote {made.folder} (distribution {made.distribution}, family {made.family_id})")
        print(f"next: medgen plugins install {made.folder}   then: medgen families")
        return EXIT_OK
    log = _log(quiet=False)
    if cmd == "uninstall":
        plan = installer.prepare_uninstall(args.name)
    elif cmd == "upgrade":
        plan = installer.prepare_upgrade(args.name, find_links=args.find_links, offline=args.offline, log=log)
    else:
        source = installer.Source(args.source, version=args.version, find_links=args.find_links,
                                  offline=args.offline)
        plan = installer.prepare_install(source, log=log)
    try:
        if not _confirm(plan, args):
            if not getattr(args, "dry_run", False):
                print("medgen: nothing changed", file=sys.stderr)
                return EXIT_CANCELLED
            return EXIT_OK
        report = installer.apply(plan, log=log)
    finally:
        plan.cleanup()
    done = {"install": "installed", "upgrade": "upgraded", "uninstall": "removed"}[plan.action]
    print(f"{done} {plan.package} {plan.version}")
    from .registry import Registry

    reg = Registry()
    mine = [e for e in reg.families() if installer.normalize(e.package) == installer.normalize(plan.package)]
    errors = [e for e in reg.errors if installer.normalize(e.package) == installer.normalize(plan.package)]
    if plan.action != "uninstall":
        for e in mine:
            print(f"  family {e.id} ({e.task.value}): {e.family.display_name}")
        for err in errors:
            print(f"medgen: warning: plugin {err.plugin!r} of {plan.package} failed to load: {err.message}",
                  file=sys.stderr)
    for message in report["messages"]:
        print(f"medgen: note: {message}", file=sys.stderr)
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    from .installer import family_packages, normalize
    from .registry import get_registry

    reg = get_registry()
    rows = []
    for pkg in family_packages():
        fams = [e.id for e in reg.families() if normalize(e.package) == normalize(pkg.name)]
        errs = [err.message for err in reg.errors if normalize(err.package) == normalize(pkg.name)]
        rows.append({**pkg.to_dict(), "families": fams, "errors": errs})
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    for row in rows:
        tag = "" if row["removable"] else "  (part of napari-medgen)"
        print(f"{row['name']} {row['version']}{tag}")
        print(f"  families: {', '.join(row['families']) or 'none'}")
        for err in row["errors"]:
            print(f"  load error: {err}")
    return EXIT_OK
