"""`tdsl.runtime.record.Record`: the frozen value classes of the load path behave like frozen
dataclasses (construction, defaults, equality, hash, repr, no assignment, pickling)."""

import copy
import pickle

import pytest

from tdsl.runtime.record import Record
from tdsl.runtime.signature import Condition, Param, Signature
from tdsl.types import Affine, DType, TensorType


class Point(Record):
    """Two fields, the second with a default."""

    __slots__ = ("x", "y")
    _defaults = {"y": 0}


class Other(Record):
    """The same fields as Point, another class."""

    __slots__ = ("x", "y")


def test_construction_by_position_keyword_and_default():
    assert (Point(1, 2).x, Point(1, 2).y) == (1, 2)
    assert Point(x=3).y == 0 and Point(4, y=5).y == 5


def test_bad_construction_is_a_type_error():
    with pytest.raises(TypeError, match="missing argument 'x'"):
        Point()
    with pytest.raises(TypeError, match="takes 2 arguments"):
        Point(1, 2, 3)
    with pytest.raises(TypeError, match="unexpected arguments"):
        Point(1, z=2)


def test_equality_and_hash_follow_the_values_and_the_class():
    assert Point(1, 2) == Point(1, 2) and hash(Point(1, 2)) == hash(Point(1, 2))
    assert Point(1, 2) != Point(2, 1)
    assert Point(1, 2) != Other(1, 2)
    assert Point(1, 2) != (1, 2)
    assert len({Point(1, 2), Point(1, 2), Point(1, 3)}) == 2


def test_fields_cannot_be_assigned_or_deleted():
    p = Point(1, 2)
    with pytest.raises(AttributeError, match="frozen"):
        p.x = 3
    with pytest.raises(AttributeError, match="frozen"):
        del p.y
    with pytest.raises(AttributeError):
        p.z = 1  # no such field either
    assert p.x == 1


def test_repr_names_the_fields():
    assert repr(Point(1, "a")) == "Point(x=1, y='a')"


def test_signatures_survive_pickle_copy_and_json():
    t = TensorType(DType.F32, (Affine.of("N"), Affine.of(3)))
    sig = Signature("k", (Param("x", t),), (Param("y", t),),
                    conditions=(Condition("ge", Affine.of("N"), "N >= 0"),))
    assert pickle.loads(pickle.dumps(sig)) == sig
    assert copy.deepcopy(sig) == sig and copy.copy(sig) == sig
    assert Signature.from_json(sig.to_json()) == sig
    assert sig.symbols == () and sig.doc == "" and sig.conditions[0].unless_empty == ()


def test_types_keep_value_semantics():
    a, b = Affine.of("N"), Affine.of("N")
    assert a == b and hash(a) == hash(b) and {a: 1}[b] == 1
    assert TensorType(DType.F32).shape == () and not TensorType(DType.F32).scalar
    assert TensorType(DType.F32, (a,)) != TensorType(DType.F64, (a,))
