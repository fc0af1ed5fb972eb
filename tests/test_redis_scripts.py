"""The script declarations: what a caller binds by name is what the Lua reads by the same name."""

import re

import pytest

from memsvc.stores import redis_fork, redis_index
from memsvc.stores import redis_scripts as lua
from memsvc.stores.redis_lua import Arg, Prefix, Script

SCRIPTS = [
    value for module in (lua, redis_index, redis_fork) for value in vars(module).values() if isinstance(value, Script)
]


def locals_read(source: str) -> dict[str, tuple[str, int]]:
    """name -> ('KEYS' or 'ARGV', position) for each `local name = KEYS[n]` of the script's prologue."""
    found = re.findall(r'^local (\w+) = (KEYS|ARGV)\[(\d+)\]$', source, flags=re.MULTILINE)
    return {name: (table, int(n)) for name, table, n in found}


def bound_by_own_name(script: Script) -> list[Arg]:
    """`script.bind` with every name bound to itself (a variadic one to two values)."""
    read = locals_read(script.source)
    variadic = re.findall(r'^local (\w+)_from = (\d+)$', script.source, flags=re.MULTILINE)
    values: dict[str, Arg | list[str]] = {name: name for name in read}
    values.update({name: [f'{name}.1', f'{name}.2'] for name, _ in variadic})
    if script.prefix is None:
        _, tail = script.bind(**values)
    else:
        shared = {name: values.pop(name) for name in (*script.prefix.keys, *script.prefix.args)}
        _, tail = script.bind(script.prefix.bind(**shared), **values)
    return tail


@pytest.mark.parametrize('script', SCRIPTS, ids=repr)
def test_each_name_lands_where_the_script_reads_it(script: Script) -> None:
    tail = bound_by_own_name(script)
    read = locals_read(script.source)
    keys = sorted((n, name) for name, (table, n) in read.items() if table == 'KEYS')
    assert tail[0] == len(keys)
    for name, (table, n) in read.items():
        assert tail[n if table == 'KEYS' else 1 + len(keys) + n - 1] == name, (script, name)
    for name, start in re.findall(r'^local (\w+)_from = (\d+)$', script.source, flags=re.MULTILINE):
        assert tail[1 + len(keys) + int(start) - 1 :] == [f'{name}.1', f'{name}.2']


def test_an_optional_key_passed_as_none_is_left_out() -> None:
    _, tail = lua.DELETE.bind(meta='m', msgs='l', counts='c', summary='y', sessions=None, session_id='s', expected='')
    assert tail == [4, 'm', 'l', 'c', 'y', 's', '']
    _, tail = lua.DELETE.bind(meta='m', msgs='l', counts='c', summary='y', sessions='i', session_id='s', expected='')
    assert tail == [5, 'm', 'l', 'c', 'y', 'i', 's', '']


def test_a_missing_or_unknown_name_is_an_error_naming_the_script() -> None:
    with pytest.raises(TypeError, match=r"delete\(\) missing 1 required keyword-only argument: 'expected'"):
        lua.DELETE.bind(meta='m', msgs='l', counts='c', summary='y', sessions=None, session_id='s')
    with pytest.raises(TypeError, match=r"delete\(\) got an unexpected keyword argument 'version'"):
        lua.DELETE.bind(
            meta='m', msgs='l', counts='c', summary='y', sessions=None, session_id='s', expected='', version='1'
        )


@pytest.mark.parametrize(
    ('keys', 'args'),
    [(('a?', 'b'), ()), ((), ('*a', 'b')), (('a',), ('a',)), (('end',), ()), (('Key',), ())],
    ids=['optional key not last', 'variadic not last', 'name twice', 'a Lua keyword', 'not lowercase'],
)
def test_a_declaration_that_could_misplace_a_value_is_refused(keys: tuple[str, ...], args: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match='distinct lowercase names'):
        Script('bad', 'return 1', keys=keys, args=args)


def test_a_script_on_a_prefix_cannot_reuse_its_names() -> None:
    prefix = Prefix('base', keys=('k',), args=('a',))
    with pytest.raises(ValueError, match='distinct lowercase names'):
        Script('bad', 'return 1', prefix=prefix, args=('a',))
