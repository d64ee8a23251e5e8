"""Admin command line: `python -m chalicelib.cli <command>`.

Reads CHITTY_DATABASE_URL like the server does. Tokens are printed once, on the last line,
so scripts can take them with `tail -n 1`.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from collections.abc import Sequence
from decimal import Decimal

from pg8000.exceptions import DatabaseError

from chalicelib import auth, migrate, upkeep
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
            print(f"applied {file_name}")
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
    try:
        token_id = uuid.UUID(args.token_id)
    except ValueError:
        print(f"error: {args.token_id!r} is not a token id (a UUID)", file=sys.stderr)
        return 2
    row = _database().one("revoke_token", token_id=str(token_id))
    if row is None:
        print(f"error: no token {token_id}", file=sys.stderr)
        return 1
    print(f"revoked token {row['id']} of {row['user_id']} at {row['revoked_at'].isoformat()}")
    return 0


def _usd(price: Decimal | None) -> str:
    """A stored price as it is, without the padding zeros of its column: 2.50, 0.075, 0.000125; '-' for none."""
    if price is None:
        return "-"
    text = f"{price:f}"
    if "." in text:
        whole, _, fraction = text.partition(".")
        text = f"{whole}.{fraction.rstrip('0').ljust(2, '0')}"
    return text


def _price(text: str) -> Decimal:
    """An argparse type: a finite, non-negative price in USD per million tokens."""
    try:
        price = Decimal(text)
    except ArithmeticError:
        price = Decimal("NaN")
    if not price.is_finite() or price < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a price (a number of USD per million tokens, 0 or more)")
    return price


def cmd_pricing_list(_: argparse.Namespace) -> int:
    print(f"{'model':<24} {'input':>10} {'cached':>10} {'output':>10}  effective from  (USD per 1M tokens)")
    for row in _database().all("list_pricing"):
        print(
            f"{row['model']:<24} {_usd(row['input_per_mtok']):>10} {_usd(row['cached_input_per_mtok']):>10}"
            f" {_usd(row['output_per_mtok']):>10}  {row['effective_from']:%Y-%m-%d %H:%M}"
        )
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
        f"{row['model']}: input {_usd(row['input_per_mtok'])}, cached input {_usd(row['cached_input_per_mtok'])}, "
        f"output {_usd(row['output_per_mtok'])} USD per 1M tokens from {row['effective_from'].isoformat()}"
    )
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

    token = commands.add_parser("token", help="manage bearer tokens").add_subparsers(dest="action", required=True)
    issue = token.add_parser("issue", help="issue a bearer token; printed once, last")
    issue.add_argument("user_id")
    issue.add_argument("--label")
    issue.add_argument("--expires-days", type=int)
    issue.set_defaults(run=cmd_token_issue)
    revoke = token.add_parser("revoke", help="revoke a token by its id")
    revoke.add_argument("token_id")
    revoke.set_defaults(run=cmd_token_revoke)

    pricing = commands.add_parser("pricing", help="model prices").add_subparsers(dest="action", required=True)
    pricing.add_parser("list", help="prices in force now").set_defaults(run=cmd_pricing_list)
    price = pricing.add_parser("set", help="set a model's price (USD per million tokens) from a date on")
    price.add_argument("model")
    price.add_argument("--input", type=_price, required=True)
    price.add_argument("--cached-input", type=_price, help="default: cached prompt tokens bill as input")
    price.add_argument("--output", type=_price, required=True)
    price.add_argument("--effective-from", help="ISO date or time (default: now); earlier rows keep their history")
    price.set_defaults(run=cmd_pricing_set)

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
