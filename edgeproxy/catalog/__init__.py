"""The built-in model catalog (SPEC §6) as data, and how a user's file is merged over it.

`models.toml` beside this file holds the catalog in the configuration file's own schema (the
`[providers.*]` and `[models.*]` tables of SPEC §1.3), so `config.parse` validates it like any file.

Merge rules (`merge(builtin, user)`), applied to the decoded TOML documents before `config.parse`:

* The user's file names no models: the catalog's models and providers are used as they are.
* `[models."X"]` for a model the catalog lacks adds it; for a catalog model it replaces the fields
  it names, one by one. Prices live in the endpoints, and a given `endpoints` list replaces the
  catalog's list whole (so new prices are stated with their endpoints). `enabled = false` alone
  switches a catalog model off.
* `[providers.X]` overrides the catalog provider's keys one by one (e.g. only `base_url`), or adds
  a provider.
* `[catalog] builtin = false` drops the catalog: only the user's own tables remain.

The `[catalog]` table is consumed here: the document `merge` returns has none.

`usable(doc)` then keeps only the endpoints that can work on this machine: their provider's
`api_key_env` is set in the environment and its `base_url` is not the catalog's placeholder.
"""

from __future__ import annotations

import copy
import os
import tomllib
from collections.abc import Mapping
from importlib import resources
from typing import Any

from ..errors import ConfigError

__all__ = ["PLACEHOLDER_HOST", "builtin_document", "merge", "usable"]

#: Hosts in the catalog that each user must replace with their own (Azure resources are per
#: customer); `usable` drops the endpoints of a provider that still has one.
PLACEHOLDER_HOST = "your-resource-name."

_text: str | None = None


def _catalog_text() -> str:
    global _text
    if _text is None:
        _text = resources.files(__name__).joinpath("models.toml").read_text(encoding="utf-8")
    return _text


def builtin_document() -> dict[str, Any]:
    """The catalog as a freshly decoded TOML document: {"providers": {...}, "models": {...}}.

    Each call returns a new dict, so callers may change it freely.
    """
    return tomllib.loads(_catalog_text())


def _table(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(path, "expected a table")
    return value


def _builtin_switch(user: dict[str, Any]) -> bool:
    cat = _table(user.get("catalog", {}), "catalog")
    for key in cat:
        if key != "builtin":
            raise ConfigError(f"catalog.{key}", "unknown key")
    builtin = cat.get("builtin", True)
    if not isinstance(builtin, bool):
        raise ConfigError("catalog.builtin", "expected a boolean (true or false)")
    return builtin


def merge(builtin: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
    """The user's document merged over the catalog, per the rules in this module's docstring.

    Neither argument is modified. Raises ConfigError for a malformed `[catalog]` table or a
    `providers` / `models` entry that is not a table; everything else is left to `config.parse`.
    """
    use_builtin = _builtin_switch(user)
    out = {k: copy.deepcopy(v) for k, v in user.items() if k != "catalog"}
    if not use_builtin:
        return out
    for section in ("providers", "models"):
        mine = _table(out.get(section, {}), section)
        merged = {
            name: dict(_table(entry, f"{section}.{name}"))
            for name, entry in copy.deepcopy(builtin.get(section, {})).items()
        }
        for name, entry in mine.items():
            entry = _table(entry, f"{section}.{name}")
            base = merged.get(name)
            # Field by field: a given `endpoints` list replaces the catalog's whole, as every
            # other value does; a key the user does not name keeps the catalog's value.
            merged[name] = entry if base is None else {**base, **entry}
        out[section] = merged
    return out


def _configured(provider: Mapping[str, Any], environ: Mapping[str, str]) -> bool:
    key_env = provider.get("api_key_env")
    if isinstance(key_env, str) and key_env and not environ.get(key_env):
        return False
    base_url = provider.get("base_url")
    return not (isinstance(base_url, str) and PLACEHOLDER_HOST in base_url)


def usable(doc: dict[str, Any], environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """`doc` without the endpoints that cannot work here, and without models left with none.

    An endpoint is dropped when its provider names an `api_key_env` that is unset or empty in
    `environ` (default: os.environ), or when the provider's base_url still holds the catalog's
    placeholder host. Endpoints naming an unknown provider, and models that had no endpoints to
    begin with, are kept so that `config.parse` reports them. `doc` is not modified.
    """
    env = os.environ if environ is None else environ
    providers = doc.get("providers", {})
    if not isinstance(providers, dict):
        return doc
    dead = {
        name for name, p in providers.items() if isinstance(p, dict) and not _configured(p, env)
    }
    models = doc.get("models", {})
    if not dead or not isinstance(models, dict):
        return doc
    kept: dict[str, Any] = {}
    for mid, model in models.items():
        eps = model.get("endpoints") if isinstance(model, dict) else None
        if not isinstance(eps, list) or not eps:
            kept[mid] = model
            continue
        alive = [e for e in eps if not (isinstance(e, dict) and e.get("provider") in dead)]
        if alive:
            kept[mid] = model if len(alive) == len(eps) else {**model, "endpoints": alive}
    return {**doc, "models": kept}
