"""Admin command line: `python -m chalicelib.cli <command>`.

Reads CHITTY_DATABASE_URL like the server does. Tokens are printed once, on the last line,
so scripts can take them with `tail -n 1`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from pg8000.exceptions import DatabaseError

from chalicelib import auth, migrate, pricing, upkeep
from chalicelib.config import ConfigError, get_settings
from chalicelib.crypto import EncryptionKeyError, SealBroken, Sealed, Sealer, parse_key
from chalicelib.db import (
    SQL_DIR,
    Database,
    DatabaseUnavailable,
    DatabaseURLError,
    Transaction,
    error_message,
    load_queries,
)
from chalicelib.pricing import usd

# Admin commands may run long (a first migration, a full rollup): a generous socket timeout.
CLI_DB_TIMEOUT = 300.0


def _database() -> Database:
    return Database(
        url=get_settings().require_database_url(),
        timeout=CLI_DB_TIMEOUT,
        queries=load_queries(SQL_DIR / "queries"),
    )


def cmd_migrate(_: argparse.Namespace) -> int:
    settings = get_settings()
    settings.require_database_url()
    # A direct URL when one is configured: the migration lock does not survive a transaction pooler.
    conn = Database(url=settings.migration_database_url or "", timeout=CLI_DB_TIMEOUT).connect()
    try:
        applied = migrate.apply(conn)
    finally:
        conn.close()
    if applied.file_names:
        for file_name in applied.file_names:
            report = applied.imports.get(file_name)
            counts = (
                f": {len(report.added)} added, {len(report.changed)} changed, {report.unchanged} unchanged"
                if report
                else ""
            )
            print(f"applied {file_name}{counts}")
    else:
        print("database is up to date")
    return 0


def cmd_user_add(args: argparse.Namespace) -> int:
    row = _database().one(
        "add_user",
        user_id=args.user_id,
        display_name=args.name or args.user_id,
        role="admin" if args.admin else "user",
    )
    assert row is not None
    print(f"user {row['id']} ({row['role']})")
    return 0


def cmd_user_invite(args: argparse.Namespace) -> int:
    from chalicelib.oauth import invites

    public_url = get_settings().public_url
    if public_url is None:
        print("error: set CHITTY_PUBLIC_URL, the server's public URL, which the link points to", file=sys.stderr)
        return 2
    link = invites.create(_database(), public_url, args.user_id, args.days)
    if link is None:
        print(f"error: no user {args.user_id!r}", file=sys.stderr)
        return 1
    print(f"Send {args.user_id} this link to set their password (single use, {args.days} days):")
    print(link)
    return 0


def cmd_apps_list(args: argparse.Namespace) -> int:
    rows = _database().all("list_grants", user_id=args.user_id, include_revoked=args.include_revoked)
    for row in rows:
        used = row["last_used_at"].isoformat() if row["last_used_at"] else "never"
        revoked = f"  revoked {row['revoked_at'].isoformat()}" if row["revoked_at"] else ""
        print(
            f"{row['id']}  {row['client_name']} ({row['redirect_host'] or row['client_id']})  scope={row['scope']}  "
            f"allowed {row['created_at'].isoformat()}  last used {used}{revoked}"
        )
    if not rows:
        print(f"{args.user_id} has no connected apps")
    return 0


def cmd_apps_revoke(args: argparse.Namespace) -> int:
    row = _database().one("revoke_user_grant", grant_id=str(args.grant_id), user_id=args.user_id)
    if row is None:
        print(f"error: {args.user_id} has no connected app {args.grant_id}", file=sys.stderr)
        return 1
    print(f"revoked {row['client_name']} ({row['id']}) of {args.user_id}: its tokens stop at once")
    return 0


def cmd_token_issue(args: argparse.Namespace) -> int:
    if args.expires_days is not None and args.expires_days <= 0:
        print("error: --expires-days must be a positive number of days", file=sys.stderr)
        return 2
    token = auth.new_token()
    row = _database().one(
        "issue_token",
        user_id=args.user_id,
        token_hash=auth.hash_token(token),
        label=args.label,
        expires_days=args.expires_days,
    )
    if row is None:
        print(f"error: no user {args.user_id!r}; create it with `user add {args.user_id}`", file=sys.stderr)
        return 1
    expires = row["expires_at"].isoformat() if row["expires_at"] else "never"
    print(f"token id: {row['id']}")
    print(f"user: {row['user_id']}  label: {row['label'] or '-'}  expires: {expires}")
    print("The token is shown once; store it now:")
    print(token)
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    row = _database().one("revoke_token", token_id=str(args.token_id))
    if row is None:
        print(f"error: no token {args.token_id}", file=sys.stderr)
        return 1
    print(f"revoked token {row['id']} of {row['user_id']} at {row['revoked_at'].isoformat()}")
    return 0


def _uuid(what: str) -> Callable[[str], uuid.UUID]:
    """An argparse type: the id of a `what`, a UUID."""

    def parse(text: str) -> uuid.UUID:
        try:
            return uuid.UUID(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {what} (a UUID)") from None

    return parse


def _price(text: str) -> Decimal:
    """An argparse type: a finite, non-negative price in USD per million tokens."""
    try:
        price = Decimal(text)
    except ArithmeticError:
        price = Decimal("NaN")
    if not price.is_finite() or price < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a price (a number of USD per million tokens, 0 or more)")
    return price


def _rates_text(rates: dict[str, Any]) -> str:
    """input, cached input, cache write (when it differs from input) and output of one set of rates."""
    text = f"input {usd(rates['input_per_mtok'])}, cached {usd(rates['cached_input_per_mtok'])}"
    if rates["cache_write_per_mtok"] != rates["input_per_mtok"]:
        text += f", cache write {usd(rates['cache_write_per_mtok'])}"
    return f"{text}, output {usd(rates['output_per_mtok'])}"


def _rate_lines(rates: dict[str, Any]) -> list[str]:
    """The rates of a price row beyond the default tier's, one indented line each."""
    lines = []
    long_context = rates["long_context"]
    if long_context:
        lines.append(f"  above {long_context['above_tokens']} prompt tokens: {_rates_text(long_context)}")
    for tier, tier_rates in sorted(rates["tiers"].items()):
        line = f"  {tier}: {_rates_text(tier_rates)}"
        if tier_rates["long_context"]:
            line += f"; above {long_context['above_tokens']}: {_rates_text(tier_rates['long_context'])}"
        lines.append(line)
    search = rates["web_search_per_call"]
    if search:
        lines.append(
            f"  web search per call: low {usd(search['low'])}, medium {usd(search['medium'])}, "
            f"high {usd(search['high'])} (USD)"
        )
    return lines


def cmd_pricing_list(_: argparse.Namespace) -> int:
    print(
        f"{'model':<28} {'input':>10} {'cached':>10} {'output':>10} {'write':>10}  effective from"
        "    (USD per 1M tokens; other tiers below)"
    )
    for row in _database().all("list_pricing"):
        rates = json.loads(row["rates"], parse_float=Decimal)
        print(
            f"{row['model']:<28} {usd(row['input_per_mtok']):>10} {usd(row['cached_input_per_mtok']):>10}"
            f" {usd(row['output_per_mtok']):>10} {usd(row['cache_write_per_mtok']):>10}"
            f"  {row['effective_from']:%Y-%m-%d %H:%M}"
        )
        for line in _rate_lines(rates):
            print(line)
    return 0


def cmd_pricing_set(args: argparse.Namespace) -> int:
    row = _database().one(
        "set_pricing",
        model=args.model,
        input=str(args.input),
        cached_input=None if args.cached_input is None else str(args.cached_input),
        output=str(args.output),
        effective_from=args.effective_from,
    )
    assert row is not None
    print(
        f"{row['model']}: input {usd(row['input_per_mtok'])}, cached input {usd(row['cached_input_per_mtok'])}, "
        f"output {usd(row['output_per_mtok'])} USD per 1M tokens from {row['effective_from'].isoformat()}"
    )
    return 0


def cmd_pricing_import(args: argparse.Namespace) -> int:
    models = pricing.load(args.source)
    row = _database().one(
        "import_model_catalogue",
        models=json.dumps(models),
        effective_from=args.effective_from,
        first_from=pricing.FIRST_PRICED_FROM,
    )
    assert row is not None
    for line in pricing.ImportReport.from_json(row["report"]).lines():
        print(line)
    return 0


def cmd_pricing_alias(args: argparse.Namespace) -> int:
    if args.remove:
        if args.model is not None:
            print("error: give either MODEL or --remove, not both", file=sys.stderr)
            return 2
        row = _database().one("remove_model_alias", alias_name=args.name)
        if row is None:
            print(f"error: no alias {args.name!r}; see `pricing aliases`", file=sys.stderr)
            return 1
        print(f"removed alias {row['name']} (was {row['model']})")
        return 0
    if args.model is None:
        print("error: give the MODEL the name stands for, or --remove", file=sys.stderr)
        return 2
    row = _database().one("set_model_alias", alias_name=args.name, model=args.model)
    if row is None:
        print(f"error: no model {args.model!r} has a price or a catalogue entry; see `pricing list`", file=sys.stderr)
        return 1
    print(f"alias {row['name']} -> {row['model']}: replies under {row['name']} are priced and described as it")
    return 0


def cmd_pricing_aliases(_: argparse.Namespace) -> int:
    for row in _database().all("list_model_aliases"):
        print(f"{row['name']} -> {row['model']}")
    return 0


def cmd_keys_reencrypt(args: argparse.Namespace) -> int:
    old_name = args.old_key_env
    old = Sealer(parse_key(os.environ.get(old_name), old_name))
    new = Sealer(parse_key(get_settings().encryption_key))
    moved = 0

    def reseal(tx: Transaction) -> None:
        nonlocal moved
        for row in tx.all("sealed_api_keys"):
            if row["key_fingerprint"] == new.fingerprint:
                continue
            key_id = str(row["id"])
            # Checked before opening, so a wrong old key is named as such, not as a damaged row.
            if row["key_fingerprint"] != old.fingerprint:
                raise SealBroken(
                    f"stored key {key_id} was sealed by neither {old_name} nor CHITTY_ENCRYPTION_KEY "
                    f"(its fingerprint is {row['key_fingerprint']}, {old_name}'s is {old.fingerprint}); "
                    "nothing was changed"
                )
            sealed = Sealed(bytes(row["ciphertext"]), bytes(row["nonce"]), row["key_fingerprint"])
            try:
                plain = old.open(sealed, row["user_id"], key_id)
            except SealBroken:
                raise SealBroken(
                    f"stored key {key_id} does not open with {old_name} although it was sealed by it "
                    "(the row was altered); nothing was changed: delete that row, its user sets the key again"
                ) from None
            resealed = new.seal(plain, row["user_id"], key_id)
            tx.one(
                "reseal_api_key",
                key_id=key_id,
                ciphertext=resealed.ciphertext,
                nonce=resealed.nonce,
                fingerprint=resealed.fingerprint,
            )
            moved += 1

    _database().transaction(reseal)
    print(f"re-encrypted {moved} stored key(s) under the key in CHITTY_ENCRYPTION_KEY")
    return 0


def cmd_analytics_refresh(_: argparse.Namespace) -> int:
    result = upkeep.roll_up_usage(_database())
    print(f"rolled up {result.rolled_up} completion(s) into usage_analytics")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m chalicelib.cli", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("migrate", help="apply pending migrations").set_defaults(run=cmd_migrate)

    user = commands.add_parser("user", help="manage users").add_subparsers(dest="action", required=True)
    add = user.add_parser("add", help="create a user (or change their role)")
    add.add_argument("user_id")
    add.add_argument("--admin", action="store_true", help="may act on any user's data")
    add.add_argument("--name", help="display name (default: the user id)")
    add.set_defaults(run=cmd_user_add)
    invite = user.add_parser("invite", help="print a single-use link at which the user sets their password")
    invite.add_argument("user_id")
    invite.add_argument("--days", type=int, default=7, choices=range(1, 31), metavar="DAYS", help="valid for (1-30)")
    invite.set_defaults(run=cmd_user_invite)

    token = commands.add_parser("token", help="manage bearer tokens").add_subparsers(dest="action", required=True)
    issue = token.add_parser("issue", help="issue a bearer token; printed once, last")
    issue.add_argument("user_id")
    issue.add_argument("--label")
    issue.add_argument("--expires-days", type=int)
    issue.set_defaults(run=cmd_token_issue)
    revoke = token.add_parser("revoke", help="revoke a token by its id")
    revoke.add_argument("token_id", type=_uuid("token id"))
    revoke.set_defaults(run=cmd_token_revoke)

    apps = commands.add_parser("apps", help="apps users connected by signing in (OAuth)").add_subparsers(
        dest="action", required=True
    )
    listed = apps.add_parser("list", help="a user's connected apps: id, client, scope, last used")
    listed.add_argument("user_id")
    listed.add_argument("--include-revoked", action="store_true")
    listed.set_defaults(run=cmd_apps_list)
    revoked = apps.add_parser("revoke", help="disconnect an app: its grant and every token of it stop at once")
    revoked.add_argument("user_id")
    revoked.add_argument("grant_id", type=_uuid("connected app's id"))
    revoked.set_defaults(run=cmd_apps_revoke)

    prices = commands.add_parser("pricing", help="model prices").add_subparsers(dest="action", required=True)
    prices.add_parser("list", help="prices in force now").set_defaults(run=cmd_pricing_list)
    price = prices.add_parser("set", help="set a model's price (USD per million tokens) from a date on")
    price.add_argument("model")
    price.add_argument("--input", type=_price, required=True)
    price.add_argument("--cached-input", type=_price, help="default: cached prompt tokens bill as input")
    price.add_argument("--output", type=_price, required=True)
    price.add_argument("--effective-from", help="ISO date or time (default: now); earlier rows keep their history")
    price.set_defaults(run=cmd_pricing_set)
    imported = prices.add_parser(
        "import", help="import OpenAI's models and prices from LiteLLM's price table (a file or an https URL)"
    )
    imported.add_argument("source", metavar="PATH_OR_URL")
    imported.add_argument(
        "--effective-from",
        help="ISO date or time changed prices apply from (default: now); a model priced for the first time is "
        f"priced from {pricing.FIRST_PRICED_FROM[:10]}",
    )
    imported.set_defaults(run=cmd_pricing_import)
    alias = prices.add_parser("alias", help="name an upstream's own model name as a known model, or --remove it")
    alias.add_argument("name")
    alias.add_argument("model", nargs="?")
    alias.add_argument("--remove", action="store_true", help="remove the alias NAME")
    alias.set_defaults(run=cmd_pricing_alias)
    prices.add_parser("aliases", help="list the model aliases").set_defaults(run=cmd_pricing_aliases)

    keys = commands.add_parser("keys", help="stored API keys").add_subparsers(dest="action", required=True)
    reencrypt = keys.add_parser(
        "reencrypt", help="move every stored key from an old encryption key to CHITTY_ENCRYPTION_KEY"
    )
    reencrypt.add_argument(
        "--old-key-env", default="CHITTY_OLD_ENCRYPTION_KEY", help="variable holding the old key (base64)"
    )
    reencrypt.set_defaults(run=cmd_keys_reencrypt)

    analytics = commands.add_parser("analytics", help="usage analytics").add_subparsers(dest="action", required=True)
    analytics.add_parser(
        "refresh", help="roll every queued completion into usage_analytics (as the schedule does)"
    ).set_defaults(run=cmd_analytics_refresh)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (
        ConfigError,
        DatabaseUnavailable,
        DatabaseURLError,
        EncryptionKeyError,
        SealBroken,
        migrate.MigrationError,
        pricing.CatalogueError,
    ) as error:
        detail = getattr(error, "detail", "")
        print(f"error: {error}" + (f" ({detail})" if detail else ""), file=sys.stderr)
        return 1
    except DatabaseError as error:
        # A statement the database refused (e.g. a user id its CHECK rejects): its message, no traceback.
        print(f"error: {error_message(error)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
