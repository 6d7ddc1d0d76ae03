"""skip-refs, in Python: a hookvault filter that skips the refs matching
glob patterns, built into a WebAssembly component by componentize-py
against the same published WIT as the Rust plugins (wit/plugin@0.3.0,
world `filter`). It shows that the interface is language-neutral.

Config, in hookvault.toml:

    [[plugins]]
    name = "skip-wip-py"
    kind = "filter"
    path = "skip_refs_py.wasm"
    config = { skip = ["refs/heads/wip/*"] }

A push that touches only matching refs is skipped; one that touches others
too is backed up without the matching ones. A config that is not a table
of string lists is logged and the push is backed up unfiltered.
"""

import json
from fnmatch import fnmatchcase

import wit_world
from wit_world.imports import config, log


def patterns():
    settings = json.loads(config.get() or "{}")
    skip = settings.get("skip", [])
    if not isinstance(skip, list) or not all(isinstance(p, str) for p in skip):
        raise ValueError("invalid plugin config at key `skip`: expected a list of strings")
    unknown = sorted(set(settings) - {"skip"})
    if unknown:
        raise ValueError(f"invalid plugin config: unknown field `{unknown[0]}`, expected `skip`")
    return skip


class WitWorld(wit_world.WitWorld):
    def filter(self, event):
        try:
            skip = patterns()
        except ValueError as e:
            log.log(log.Level.ERROR, f"{e}; the event is backed up unfiltered")
            return wit_world.Decision_Keep()
        names = [change.name for change in event.changes]
        kept = [name for name in names if not any(fnmatchcase(name, p) for p in skip)]
        if len(kept) == len(names):
            return wit_world.Decision_Keep()
        if not kept:
            return wit_world.Decision_Skip("no changed ref is backed up: " + ", ".join(names))
        skipped = [name for name in names if name not in kept]
        log.log(log.Level.INFO, "not backing up " + ", ".join(skipped))
        return wit_world.Decision_Refs(kept)
