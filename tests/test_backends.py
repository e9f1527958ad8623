"""The backend contract: the kernel and the reference modules export the same names, with the
same signatures, so that code written against one runs on the other. Written over whatever the
modules export: a new layer or function is covered as soon as it is added."""

import inspect

import pytest

from fastbp import functions, layers, nets, optim, reference
from fastbp.backends import BACKENDS, check_backend, function_module, layer_module

PAIRS = {"layers": (layers, reference.layers), "functions": (functions, reference.functions)}
METHODS = ("__init__", "forward", "backward")


def public_defined(module, kind, homes):
    """Public names of ``kind`` (classes or functions) in ``module`` that are defined in one of
    the modules ``homes`` (the kernel module may take a class from the reference unchanged)."""
    names = {m.__name__ for m in homes}
    return {name for name, obj in vars(module).items()
            if not name.startswith("_") and kind(obj) and getattr(obj, "__module__", "") in names}


@pytest.mark.parametrize("pair", list(PAIRS))
def test_same_exports(pair):
    kernel, ref = PAIRS[pair]
    assert sorted(kernel.__all__) == sorted(ref.__all__)
    for module in (kernel, ref):
        assert len(set(module.__all__)) == len(module.__all__), module.__name__
        missing = [name for name in module.__all__ if not hasattr(module, name)]
        assert not missing, (module.__name__, missing)


@pytest.mark.parametrize("pair", list(PAIRS))
def test_every_public_class_is_exported(pair):
    """A class added to one backend without ``__all__`` would escape the contract."""
    for module in PAIRS[pair]:
        defined = public_defined(module, inspect.isclass, PAIRS[pair])
        assert defined <= set(module.__all__), module.__name__


def layer_names():
    return sorted(name for name in layers.__all__ if inspect.isclass(getattr(layers, name)))


@pytest.mark.parametrize("name", layer_names())
def test_layer_signatures_agree(name):
    kernel, ref = getattr(layers, name), getattr(reference.layers, name)
    for method in METHODS:
        assert hasattr(kernel, method) == hasattr(ref, method), (name, method)
        if hasattr(kernel, method):
            assert (inspect.signature(getattr(kernel, method))
                    == inspect.signature(getattr(ref, method))), (name, method)
    assert hasattr(kernel, "forward") and hasattr(kernel, "backward"), name


@pytest.mark.parametrize("name", sorted(functions.__all__))
def test_function_signatures_and_constants_agree(name):
    kernel, ref = getattr(functions, name), getattr(reference.functions, name)
    if callable(kernel):
        assert inspect.signature(kernel) == inspect.signature(ref), name
    else:
        assert kernel == ref, name


def test_shared_helpers_agree():
    """Public helpers that both function modules define outside ``__all__`` (``sigmoid_parts``)
    keep one signature too."""
    pair = PAIRS["functions"]
    shared = (public_defined(functions, inspect.isfunction, pair[:1])
              & public_defined(reference.functions, inspect.isfunction, pair[1:]))
    assert "sigmoid_parts" in shared
    for name in shared:
        assert (inspect.signature(getattr(functions, name))
                == inspect.signature(getattr(reference.functions, name))), name


def test_signature_check_catches_a_difference():
    """The comparison the tests above rely on sees a renamed or re-defaulted argument."""
    def forward(self, x, train_flg=True):
        pass

    def other(self, x, train_flag=True):
        pass

    def default(self, x, train_flg=False):
        pass

    assert inspect.signature(forward) != inspect.signature(other)
    assert inspect.signature(forward) != inspect.signature(default)


def test_one_backends_constant_everywhere():
    assert BACKENDS == ("kernel", "reference")
    assert nets.BACKENDS is BACKENDS and nets.layer_module is layer_module
    assert layer_module("kernel") is layers and layer_module("reference") is reference.layers
    assert function_module("kernel") is functions
    assert function_module("reference") is reference.functions
    for backend in BACKENDS:
        assert check_backend(backend) == backend
        assert optim.SGD(backend=backend).backend == backend
    for call in (check_backend, layer_module, function_module, lambda b: optim.SGD(backend=b),
                 lambda b: nets.TwoLayerNet(2, 2, 2, backend=b)):
        with pytest.raises(ValueError, match="kernel"):
            call("torch")
