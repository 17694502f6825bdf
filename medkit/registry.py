"""One registry mechanism for everything pluggable: models, losses, optimizers, metrics, tasks, readers, ...

A `Registry` maps names to factories. Built-in entries live in modules that are imported the first time the
registry is looked up (so `medkit --help` never imports torch). Third-party packages add entries through entry
points in the group ``medkit.<kind>`` (entry name = registry name); they are read lazily, never shadow a
built-in, and are switched off with ``MEDKIT_DISABLE_PLUGINS=1``. A prefix such as ``timm/`` delegates every
name below it to another library.

This module imports neither torch nor typer.
"""

from __future__ import annotations

import fnmatch
import functools
import importlib
import inspect
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from medkit.errors import MedkitError, UnknownNameError, UsageError, did_you_mean

__all__ = ["Entry", "Prefix", "Registry", "plugins_disabled", "keyword_options"]

T = TypeVar("T")


def plugins_disabled() -> bool:
    """Whether third-party entry points are switched off (``MEDKIT_DISABLE_PLUGINS=1``)."""
    return os.environ.get("MEDKIT_DISABLE_PLUGINS", "").strip().lower() in {"1", "true", "yes", "on"}


def keyword_options(
    kind: str, ignore: Iterable[str] = (), doc: str = "docs/plugins.md"
) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorator for a factory whose options are keyword-only: an unknown option is a `UsageError` naming the
    valid ones with a "did you mean" suggestion, instead of a bare `TypeError`.

    Args:
        kind: Word used in the message (``"loss"``, ``"metric"``).
        ignore: Context options dropped when the factory does not declare them, so a caller (the engine) can pass
            the same facts (label prevalence, number of classes) to every factory of a kind.
        doc: Where the options are documented, for the hint.
    """
    ignored = frozenset(ignore)

    def decorate(fn: Callable[..., T]) -> Callable[..., T]:
        valid = [p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> T:
            if args:
                raise UsageError(f"{kind} '{fn.__name__}' takes keyword options only, got {len(args)} positional")
            kwargs = {k: v for k, v in kwargs.items() if k in valid or k not in ignored}
            for key in kwargs:
                if key not in valid:
                    raise UsageError(
                        f"unknown option '{key}' for {kind} '{fn.__name__}'{did_you_mean(key, valid)}",
                        hint=f"options of {fn.__name__}: {', '.join(valid) or 'none'} (see {doc})",
                    )
            return fn(**kwargs)

        return wrapper

    return decorate


def _first_doc_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0].strip() if doc.strip() else ""


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered name.

    Attributes:
        name: The registry name (what users type).
        factory: Callable that builds the object; for plugins it is loaded on first use.
        description: One line shown by `medkit list`.
        flags: Capability flags (for example ``multilabel=True``, ``needs_indices=True``).
        source: ``"builtin"``, the plugin distribution name, or the prefix that resolved it.
    """

    name: str
    factory: Callable[..., T]
    description: str = ""
    flags: Mapping[str, Any] = field(default_factory=dict)
    source: str = "builtin"


@dataclass(frozen=True)
class Prefix:
    """Delegation of every name ``<prefix>/<rest>`` to another library.

    Attributes:
        prefix: The text before the slash, e.g. ``"timm"``.
        resolve: ``resolve(rest)`` returns a factory for ``rest`` or raises `KeyError` when the library has none.
        list_names: ``list_names(pattern)`` lists the library's names matching a shell-style pattern.
        description: Shown by `medkit list` for the prefix itself.
    """

    prefix: str
    resolve: Callable[[str], Callable[..., Any]]
    list_names: Callable[[str], list[str]]
    description: str = ""


class Registry(Generic[T]):
    """Names to factories for one kind of pluggable component.

    Args:
        kind: Plural name of the kind (``"losses"``); entry-point group is ``medkit.<kind>``.
        singular: Word used in messages (``"loss"``).
        builtins: Modules imported on first lookup; they register the built-in entries.
        signature: The factory signature every entry of this kind follows (documented in docs/plugins.md).
    """

    def __init__(self, kind: str, singular: str, builtins: Sequence[str] = (), signature: str = "") -> None:
        self.kind = kind
        self.singular = singular
        self.signature = signature
        self._builtin_modules = list(builtins)
        self._entries: dict[str, Entry[T]] = {}
        self._prefixes: dict[str, Prefix] = {}
        self._builtins_loaded = False
        self._loading = False
        self._plugins: dict[str, Any] | None = None  # name -> importlib.metadata.EntryPoint, not loaded yet
        self._plugin_errors: dict[str, str] = {}

    # ------------------------------------------------------------------ registration
    def register(
        self,
        name: str | Callable[..., T] | None = None,
        obj: Callable[..., T] | None = None,
        *,
        description: str | None = None,
        aliases: Iterable[str] = (),
        **flags: Any,
    ) -> Any:
        """Register a factory under a name; usable as ``@REG.register("name", flag=True)`` or directly.

        Args:
            name: Registry name; defaults to the factory's ``__name__``.
            obj: The factory, when called directly instead of as a decorator.
            description: One line for `medkit list`; defaults to the first docstring line.
            aliases: Other names that resolve to the same entry.
            **flags: Capability flags stored on the entry.

        Returns:
            The factory (decorator form) so it stays importable.

        Raises:
            MedkitError: When the name is already registered (a built-in is never replaced).
        """
        if callable(name) and obj is None:  # bare @register
            return self.register(None, name, description=description, aliases=aliases, **flags)

        def decorator(fn: Callable[..., T]) -> Callable[..., T]:
            key = str(name) if name is not None else fn.__name__
            self._add(Entry(key, fn, description or _first_doc_line(fn), dict(flags), "builtin"))
            for alias in aliases:
                self._add(Entry(alias, fn, description or _first_doc_line(fn), {**flags, "alias_of": key}, "builtin"))
            return fn

        return decorator(obj) if obj is not None else decorator

    def _add(self, entry: Entry[T]) -> None:
        if entry.name in self._entries:
            raise MedkitError(
                f"{self.singular} '{entry.name}' is registered twice",
                hint="pick another name; built-in names cannot be replaced",
            )
        if "/" in entry.name and entry.name.split("/", 1)[0] in self._prefixes:
            raise MedkitError(f"{self.singular} '{entry.name}' collides with the prefix '{entry.name.split('/')[0]}/'")
        self._entries[entry.name] = entry

    def add_prefix(
        self,
        prefix: str,
        resolve: Callable[[str], Callable[..., Any]],
        list_names: Callable[[str], list[str]],
        description: str = "",
    ) -> None:
        """Delegate every ``<prefix>/<name>`` lookup to another library (see `Prefix`)."""
        if prefix in self._prefixes:
            raise MedkitError(f"prefix '{prefix}/' is registered twice for {self.kind}")
        self._prefixes[prefix] = Prefix(prefix, resolve, list_names, description)

    # ------------------------------------------------------------------ loading
    def _ensure_builtins(self) -> None:
        if self._builtins_loaded or self._loading:
            return
        self._loading = True
        try:
            for module in self._builtin_modules:
                importlib.import_module(module)
            self._builtins_loaded = True
        finally:
            self._loading = False

    def _plugin_points(self) -> dict[str, Any]:
        if plugins_disabled():
            return {}
        if self._plugins is None:
            from importlib.metadata import entry_points

            self._plugins = {}
            for ep in entry_points(group=f"medkit.{self.kind}"):
                self._plugins.setdefault(ep.name, ep)
        return self._plugins

    def _load_plugin(self, name: str) -> Entry[T] | None:
        points = self._plugin_points()
        ep = points.get(name)
        if ep is None or name in self._entries:  # a built-in is never shadowed
            return None
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin must not take medkit down
            self._plugin_errors[name] = f"{type(exc).__name__}: {exc}"
            raise MedkitError(
                f"plugin {self.singular} '{name}' ({ep.value}) failed to load: {exc}",
                hint="reinstall or remove the plugin package, or set MEDKIT_DISABLE_PLUGINS=1",
            ) from exc
        dist = getattr(getattr(ep, "dist", None), "name", None) or ep.value.split(":")[0]
        if isinstance(obj, Entry):
            entry = Entry(name, obj.factory, obj.description, dict(obj.flags), dist)
        else:
            flags = dict(getattr(obj, "medkit_flags", {}) or {})
            entry = Entry(name, obj, _first_doc_line(obj), flags, dist)
        self._entries[name] = entry
        return entry

    # ------------------------------------------------------------------ lookup
    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            self.get(name)
        except MedkitError:
            return False
        return True

    def get(self, name: str) -> Entry[T]:
        """Return the entry for ``name``.

        Raises:
            UnknownNameError: With a "did you mean" suggestion when the name is not registered.
        """
        self._ensure_builtins()
        if name in self._entries:
            return self._entries[name]
        if "/" in name:
            prefix, rest = name.split("/", 1)
            if prefix in self._prefixes:
                handler = self._prefixes[prefix]
                try:
                    factory = handler.resolve(rest)
                except KeyError:
                    guess = did_you_mean(rest, handler.list_names("*"), prefix=f"{prefix}/")
                    raise UnknownNameError(
                        f"unknown {self.singular} '{name}'{guess}",
                        hint=f"run `medkit list {self.kind} '{prefix}/*'` to see what {prefix} offers",
                    ) from None
                return Entry(name, factory, handler.description, {}, prefix)
        entry = self._load_plugin(name)
        if entry is not None:
            return entry
        candidates = list(self._entries) + list(self._plugin_points())
        raise UnknownNameError(
            f"unknown {self.singular} '{name}'{did_you_mean(name, candidates)}",
            hint=f"run `medkit list {self.kind}` to see the names",
        )

    def create(self, name: str, *args: Any, **kwargs: Any) -> T:
        """Build the component ``name``; keyword arguments that are None are dropped (= the component's default)."""
        entry = self.get(name)
        return entry.factory(*args, **{k: v for k, v in kwargs.items() if v is not None})

    def names(self, pattern: str | None = None, include_prefixed: bool = True) -> list[str]:
        """Registered names matching a shell-style pattern (``"efficientnet*"``), sorted.

        A pattern that starts with a registered prefix (``"timm/resnet*"``) lists the delegated library's names.
        """
        return [e.name for e in self.entries(pattern, include_prefixed=include_prefixed)]

    def entries(self, pattern: str | None = None, include_prefixed: bool = True) -> list[Entry[T]]:
        """Entries matching a shell-style pattern; plugins are listed without being imported."""
        self._ensure_builtins()
        pattern = pattern or "*"
        out: dict[str, Entry[T]] = {n: e for n, e in self._entries.items() if fnmatch.fnmatchcase(n, pattern)}
        for name, ep in self._plugin_points().items():
            if name not in out and name not in self._entries and fnmatch.fnmatchcase(name, pattern):
                dist = getattr(getattr(ep, "dist", None), "name", None) or ep.value.split(":")[0]
                out[name] = Entry(name, _LazyPlugin(self, name), f"(plugin {ep.value})", {}, dist)
        if include_prefixed and "/" in pattern:
            prefix, rest = pattern.split("/", 1)
            if prefix in self._prefixes:
                handler = self._prefixes[prefix]
                for n in handler.list_names(rest or "*"):
                    out[f"{prefix}/{n}"] = Entry(f"{prefix}/{n}", _LazyPrefixed(self, f"{prefix}/{n}"), "", {}, prefix)
        return [out[k] for k in sorted(out)]

    @property
    def prefixes(self) -> list[Prefix]:
        """Registered prefix delegations."""
        self._ensure_builtins()
        return list(self._prefixes.values())

    def plugins(self) -> list[tuple[str, str, str]]:
        """Third-party entry points of this kind as ``(name, target, status)``; nothing is imported."""
        self._ensure_builtins()
        rows = []
        for name, ep in sorted(self._plugin_points().items()):
            if name in self._entries and self._entries[name].source == "builtin":
                status = "ignored: shadows a built-in"
            elif name in self._plugin_errors:
                status = f"broken: {self._plugin_errors[name]}"
            else:
                status = "available"
            rows.append((name, ep.value, status))
        return rows

    def __iter__(self) -> Iterator[str]:
        return iter(self.names(include_prefixed=False))

    def __len__(self) -> int:
        return len(self.names(include_prefixed=False))

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} entries)"


class _LazyPlugin:
    """Stand-in factory for a listed plugin: loads it on first call."""

    def __init__(self, registry: Registry[Any], name: str) -> None:
        self._registry, self._name = registry, name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._registry.get(self._name).factory(*args, **kwargs)


class _LazyPrefixed(_LazyPlugin):
    """Stand-in factory for a prefixed name listed by the delegated library."""
