"""`git bake store fsck / gc / du`: the content-addressed store."""

from __future__ import annotations

import click

from gitbake.cli.common import CONTEXT, repository
from gitbake.cli.render import digest_short, emit_json, human_size, progress_reporter


@click.group(context_settings=CONTEXT)
def store() -> None:
    """Inspect and maintain the content-addressed store of adapters and datasets.

    The store lives in <git-common-dir>/bake, or where `git config bake.storePath DIR` says (a store
    may be shared by several clones). Format: docs/store-format.md.

    \b
    Examples:
      git bake store du
      git bake store fsck
      git bake store gc --dry-run
    """


@store.command("fsck", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def store_fsck(as_json: bool) -> None:
    """Re-hash every object; check every manifest and what HEAD's model needs; name what is wrong (exit 4).

    Corrupt objects (and anything in objects/ that is not a regular file) move to quarantine/.
    Leftovers in tmp/ are removed (folders only when no other process uses the store).

    \b
    Example:
      git bake store fsck || git bake pull     # re-fetch what was quarantined
    """
    from gitbake.errors import EXIT_CORRUPT
    from gitbake.repo.fsck import check_head, fsck

    repo = repository()
    report = fsck(repo.store, progress=progress_reporter("checking objects"), head=check_head(repo.root))
    if as_json:
        emit_json(report.as_json())
    else:
        click.echo(
            f"checked {report.checked} objects ({human_size(report.bytes)}); removed {report.tmp_removed} leftover(s) "
            "from tmp/"
        )
        if report.tmp_kept:
            click.echo(
                f"kept {report.tmp_kept} folder(s) in tmp/: another process is using the store (run fsck again when it "
                "is done)"
            )
        for digest, actual in report.corrupt.items():
            click.echo(f"corrupt: {digest} (hashes to {actual}); moved to quarantine/", err=True)
        for digest, what in report.not_files.items():
            click.echo(f"corrupt: {digest} is {what}, not a file; moved to quarantine/", err=True)
        for digest, why in report.bad_manifests.items():
            click.echo(f"bad manifest: {digest}: {why}", err=True)
        for manifest, missing in report.missing_in_manifests.items():
            click.echo(
                f"incomplete: manifest {digest_short(manifest)} names {len(missing)} missing object(s): "
                f"{', '.join(missing)}",
                err=True,
            )
        for digest, who in report.missing_needed.items():
            click.echo(f"missing: {digest}, which {who} names", err=True)
        for who, why in report.head_problems.items():
            click.echo(f"damaged: {who}: {why}", err=True)
        if report.dangling_keys:
            click.echo(f"{len(report.dangling_keys)} stage key(s) point at missing objects (they count as not cached)")
        if report.ok:
            click.echo("store OK")
        else:
            click.echo("hint: `git bake pull` fetches good copies from the default remote", err=True)
    if not report.ok:
        raise SystemExit(EXIT_CORRUPT)


@store.command("gc", context_settings=CONTEXT)
@click.option("--dry-run", "-n", is_flag=True, help="Only say what would be deleted.")
@click.option(
    "--grace",
    default="14d",
    show_default=True,
    metavar="AGE",
    help="Keep objects and keys younger than this (30m, 12h, 14d, 0).",
)
@click.option(
    "--force", is_flag=True, help="Also delete unreachable objects that no remote has (they may be the only copy)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def store_gc(dry_run: bool, grace: str, force: bool, as_json: bool) -> None:
    """Delete objects that no ref, reflog entry or recent key reaches.

    Counts the refs of every clone registered with the store. When remotes are configured, an
    unreachable object that no remote has is kept (it may be the only copy) unless --force.

    \b
    Examples:
      git bake store gc --dry-run
      git bake store gc --grace 0 --force      # everything unreachable, now
    """
    from gitbake.repo import gc

    grace_s = gc.parse_grace(grace)
    report = gc.store_gc(repository(), grace_s, dry_run=dry_run, force=force)
    if as_json:
        emit_json(report.as_json())
        return
    verb = "would delete" if dry_run else "deleted"
    click.echo(
        f"{report.live} live object(s) across {len(report.clones)} clone(s); {verb} {len(report.deleted)} "
        f"({human_size(report.deleted_bytes)})"
    )
    if report.keys_deleted:
        click.echo(f"{verb} {len(report.keys_deleted)} stage key(s) whose result is gone")
    if report.kept_unpushed:
        click.echo(
            f"kept {len(report.kept_unpushed)} unreachable object(s) that no remote has: `git bake push` them, or use "
            "--force"
        )
    if report.leases:
        click.echo(f"kept what {len(report.leases)} running bake(s) read or stored")
    if report.tmp_removed:
        click.echo(f"removed {report.tmp_removed} leftover(s) from tmp/")


@store.command("du", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def store_du(as_json: bool) -> None:
    """Show where the store is and what it holds.

    \b
    Example:
      git bake store du --json | jq .bytes
    """
    from gitbake.repo.fsck import du

    report = du(repository().store)
    if as_json:
        emit_json(report.as_json())
        return
    click.echo(f"store: {report.root}")
    click.echo(f"objects: {report.objects} ({human_size(report.bytes)}), of which {report.manifests} manifest(s)")
    keys = ", ".join(f"{k} {v}" for k, v in sorted(report.keys.items())) or "none"
    click.echo(f"stage keys: {keys}")
    if report.tmp_bytes or report.quarantine_bytes:
        click.echo(f"tmp/: {human_size(report.tmp_bytes)}; quarantine/: {human_size(report.quarantine_bytes)}")
