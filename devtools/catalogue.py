"""Refresh the catalogue the product ships: `python -m devtools.catalogue [PATH_OR_URL]`.

Reads LiteLLM's price table (default: its file on GitHub; or the copy in the `litellm` wheel,
litellm/model_prices_and_context_window_backup.json) and writes its OpenAI text models, with only
the keys chalicelib/pricing.py reads, to sql/catalogue/openai-models.json. `migrate` imports the
file whenever it changes.
"""

from __future__ import annotations

import json
import sys

from chalicelib import pricing

LITELLM_TABLE = "https://raw.githubusercontent.com/BerriAI/litellm/main/model_prices_and_context_window.json"
TARGET = pricing.CATALOGUE_DIR / "openai-models.json"


def main(argv: list[str]) -> int:
    source = argv[0] if argv else LITELLM_TABLE
    table = json.loads(pricing.read_source(source))
    kept = pricing.trimmed(table)
    pricing.catalogue_entries(kept)  # refuses a table it cannot import before anything is written
    TARGET.write_text(json.dumps(kept, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {len(kept)} models to {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
