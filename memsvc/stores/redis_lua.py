"""How a Lua script of the Redis store is declared (`redis_scripts` declares them).

Each script names its KEYS and ARGV once, in its declaration. The declaration writes the Lua locals
that read them, so a script's body uses names only, and it makes the script's `bind`, which callers call
with the same names: `transport.script(APPEND.bind(session, max_messages=..., bodies=...))`. No position
is written anywhere by hand.
"""

import hashlib
import keyword
import re
from collections.abc import Callable, Sequence
from typing import Any, cast

Arg = bytes | str | int | float
"""One argument of a command, as Redis receives it."""

_NAME = re.compile(r'[a-z][a-z0-9_]*')
_LUA_KEYWORDS = frozenset(
    [
        'and',
        'break',
        'do',
        'else',
        'elseif',
        'end',
        'false',
        'for',
        'function',
        'goto',
        'if',
        'in',
        'local',
        'nil',
        'not',
        'or',
        'repeat',
        'return',
        'then',
        'true',
        'until',
        'while',
    ]
)


class _Names:
    """A declaration's KEYS and ARGV: `name?` marks the last key optional, `*name` the last argument variadic."""

    def __init__(self, owner: str, keys: Sequence[str], args: Sequence[str]) -> None:
        self.optional = keys[-1][:-1] if keys and keys[-1].endswith('?') else None
        self.variadic = args[-1][1:] if args and args[-1].startswith('*') else None
        self.keys = tuple(key.removesuffix('?') for key in keys)
        self.args = tuple(args[:-1] if self.variadic else args)
        names = [*self.keys, *self.args, *([self.variadic] if self.variadic else [])]
        if (
            any(key.endswith('?') for key in keys[:-1])
            or any(arg.startswith('*') for arg in args[:-1])
            or len(set(names)) != len(names)
            or not all(_NAME.fullmatch(n) and not keyword.iskeyword(n) and n not in _LUA_KEYWORDS for n in names)
        ):
            raise ValueError(
                f'{owner}: KEYS {keys} and ARGV {args} need distinct lowercase names, only the last key '
                'optional (`name?`) and only the last argument variadic (`*name`)'
            )

    def params(self) -> list[str]:
        """Keyword-only parameters, one per name."""
        names = [*self.keys, *self.args, *([self.variadic] if self.variadic else [])]
        return ['*', *names] if names else []

    def tail(self, keys: Sequence[str], leading: Sequence[str] = ()) -> str:
        """Python for the list that follows a script in EVALSHA: number of keys, keys, arguments."""
        count = [] if leading else [str(len(keys))]
        variadic = [f'*{self.variadic}'] if self.variadic else []
        return '[' + ', '.join([*count, *leading, *keys, *self.args, *variadic]) + ']'

    def returns(self, before: str = '') -> str:
        """The body of a function returning `before` + `tail()`, without the optional key when it is None."""
        body = f'    return {before}{self.tail(self.keys)}\n'
        if self.optional is None:
            return body
        return f'    if {self.optional} is None:\n        return {before}{self.tail(self.keys[:-1])}\n' + body


def _compile(name: str, params: Sequence[str], body: str, env: dict[str, Any]) -> Callable[..., Any]:
    """A function made from source, as `dataclasses` and `namedtuple` make theirs: a call with keyword
    arguments is the cheapest binding by name CPython has, and these run on every request. Named after
    the script, so that Python's errors for a missing or unknown name say which script."""
    namespace = dict(env)
    exec(f'def {name}({", ".join(params)}):\n{body}', namespace)
    return cast(Callable[..., Any], namespace[name])


def _prologue(keys: Sequence[str], args: Sequence[str], variadic: str | None) -> str:
    """Lua locals for the KEYS and ARGV, by name."""
    lines = [f'local {key} = KEYS[{n}]\n' for n, key in enumerate(keys, 1)]
    lines += [f'local {arg} = ARGV[{n}]\n' for n, arg in enumerate(args, 1)]
    if variadic:
        lines.append(f'local {variadic}_from = {len(args) + 1}\n')
    return ''.join(lines)


class Prefix:
    """KEYS and leading ARGV that several scripts share, and the Lua they share; bound once per call.

    `bind(**values)` takes them by name and gives the list that a `Script` declared with this prefix takes
    first in its own `bind`.
    """

    __slots__ = ('args', 'bind', 'keys', 'name', 'source')

    bind: Callable[..., list[Arg]]

    def __init__(self, name: str, *parts: str, keys: Sequence[str], args: Sequence[str]) -> None:
        names = _Names(name, keys, args)
        if names.variadic:
            raise ValueError(f'{name}: a prefix cannot end in a variadic argument')
        self.name, self.keys, self.args, self.source = name, names.keys, names.args, ''.join(parts)
        self.bind = _compile(name, names.params(), names.returns(), {})


class Script:
    """A Lua script and its KEYS and ARGV, each named, in order.

    A key named `name?` (the last one only) is optional: the caller passes None to leave it out, and the
    script sees nil. An argument named `*name` (the last one only) takes a sequence, the rest of ARGV,
    which the script reads as ARGV[name_from ..]. With a `prefix`, the script's KEYS are the prefix's and
    its ARGV the prefix's, then its own, and `bind` takes the prefix's bound list first.

    `bind(...)` takes the values by name and gives the call that `Transport.script` runs.
    """

    __slots__ = ('bind', 'name', 'prefix', 'sha', 'source')

    bind: Callable[..., 'ScriptCall']

    def __init__(
        self, name: str, *parts: str, keys: Sequence[str] = (), args: Sequence[str] = (), prefix: Prefix | None = None
    ) -> None:
        self.name, self.prefix = name, prefix
        names = _Names(name, keys, args)
        if prefix is None:
            params, body = names.params(), names.returns('_script, ')
            self.source = _prologue(names.keys, names.args, names.variadic)
        else:
            if keys:
                raise ValueError(f"{name}: a script with a prefix takes the prefix's KEYS only")
            _Names(name, prefix.keys, [*prefix.args, *names.args])  # no name twice
            params = [prefix.name, *names.params()]
            body = f'    return _script, {names.tail((), leading=[f"*{prefix.name}"])}\n'
            self.source = _prologue(prefix.keys, (*prefix.args, *names.args), names.variadic) + prefix.source
        self.source += ''.join(parts)
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()
        self.bind = _compile(name, params, body, {'_script': self})

    def __repr__(self) -> str:
        return f'Script({self.name!r})'


ScriptCall = tuple[Script, list[Arg]]
"""A script and what follows it in EVAL/EVALSHA (the number of keys, the keys, the arguments): `Script.bind`'s."""
