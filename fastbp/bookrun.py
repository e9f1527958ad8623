"""``fastbp run SCRIPT [ARGS...]``: run a book script unmodified, with fastbp as its ``common``.

The book's scripts do ``sys.path.append(os.pardir)`` and then ``from common.layers import *``.
Under ``fastbp run`` every ``common`` import is answered by fastbp before the path is searched:
a meta-path finder at the front of ``sys.meta_path`` serves

======================================  =====================================
``common.functions``                    :mod:`fastbp.functions`
``common.layers``                       :mod:`fastbp.layers`
``common.util``                         ``fastbp.util``
``common.gradient``                     :mod:`fastbp.gradient`
``common.optimizer``                    :mod:`fastbp.optim`
``common.multi_layer_net``              :mod:`fastbp.nets` (``MultiLayerNet``)
``common.multi_layer_net_extend``       :mod:`fastbp.nets` (``MultiLayerNetExtend``)
``common.trainer``                      :mod:`fastbp.trainer`
======================================  =====================================

and ``common`` itself, as a package; any other ``common.*`` name raises ``ImportError``. The
``common/`` folder of the book is never imported. Everything else (``dataset.mnist``, a
chapter's own ``simple_convnet``) imports as usual, and gets fastbp through its own ``common``
imports.

Each served module is a new module object holding the names the book's module gives
``import *``: its own classes and functions, where fastbp has them, and what the book's module
imports itself (``np``; ``common.layers`` also hands out the functions, ``im2col`` and
``col2im``; ``common.trainer`` the optimizers; ...). fastbp's own modules keep their ``__all__``.
The book's modules also run ``sys.path.append(os.pardir)`` when imported; the served ones do not.

The script runs as under ``python SCRIPT``: ``sys.argv`` is ``[SCRIPT, *ARGS]``, the script's
folder is ``sys.path[0]``, ``__name__`` is ``"__main__"`` and ``__file__`` its absolute path; an
exception prints a traceback that starts in the script and exits with status 1, and
``sys.exit`` sets the status.
"""

import builtins
import contextlib
import importlib
import importlib.abc
import importlib.machinery
import os
import sys
import types

__all__ = ["BOOK_MODULES", "BookFinder", "add_arguments", "book_modules", "install", "run",
           "run_script"]

_FUNCTIONS = ("identity_function", "step_function", "sigmoid", "sigmoid_grad", "relu",
              "relu_grad", "softmax", "sum_squared_error", "cross_entropy_error", "softmax_loss")
_LAYERS = ("Relu", "Sigmoid", "Affine", "SoftmaxWithLoss", "Dropout", "BatchNormalization",
           "Convolution", "Pooling")
_UTIL = ("smooth_curve", "shuffle_dataset", "conv_output_size", "im2col", "col2im")
_OPTIMIZERS = ("SGD", "Momentum", "Nesterov", "AdaGrad", "RMSprop", "Adam")

# What the book's modules import at their top, as (bound name, module, attribute or None for
# the module itself, or "*" for every public name of a served module).
_NP = ("np", "numpy", None)
_SYS_OS = (("sys", "sys", None), ("os", "os", None))
_NET_IMPORTS = (*_SYS_OS, _NP, ("OrderedDict", "collections", "OrderedDict"),
                (None, "common.layers", "*"),
                ("numerical_gradient", "common.gradient", "numerical_gradient"))

BOOK_MODULES = {
    "common.functions": ("fastbp.functions", (_NP,), _FUNCTIONS),
    "common.util": ("fastbp.util", (_NP,), _UTIL),
    "common.gradient": ("fastbp.gradient", (_NP,), ("numerical_gradient_2d",
                                                    "numerical_gradient")),
    "common.layers": ("fastbp.layers",
                      (_NP, (None, "common.functions", "*"), ("im2col", "common.util", "im2col"),
                       ("col2im", "common.util", "col2im")),
                      _LAYERS),
    "common.optimizer": ("fastbp.optim", (_NP,), _OPTIMIZERS),
    "common.multi_layer_net": ("fastbp.nets", _NET_IMPORTS, ("MultiLayerNet",)),
    "common.multi_layer_net_extend": ("fastbp.nets", _NET_IMPORTS, ("MultiLayerNetExtend",)),
    "common.trainer": ("fastbp.trainer", (*_SYS_OS, _NP, (None, "common.optimizer", "*")),
                       ("Trainer",)),
}
"""Each book module: (the fastbp module that serves it, what the book's module imports at its
top, the names it defines). A name fastbp lacks is left out; a missing fastbp module makes the
book module's import fail."""

_PACKAGE = "common"


def _is_book_name(fullname):
    return fullname == _PACKAGE or fullname.startswith(_PACKAGE + ".")


def _home(fullname):
    """The fastbp module behind ``fullname``, imported; ModuleNotFoundError if fastbp lacks it."""
    home = BOOK_MODULES[fullname][0]
    try:
        return importlib.import_module(home)
    except ModuleNotFoundError as exc:
        if exc.name != home:  # a bug inside the module, not its absence: show it as it is
            raise
        raise ModuleNotFoundError(
            f"No module named {fullname!r}: this fastbp has no {home}, which would serve the "
            f"book's {fullname}", name=fullname) from exc


def _public_names(module):
    return {k: v for k, v in vars(module).items() if not k.startswith("_")}


def _imported_names(imports):
    """The names the book's module binds with its own imports, where they can be had."""
    names = {}
    for bound, module_name, attr in imports:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name or not _is_book_name(module_name):
                raise
            continue  # e.g. common.util while fastbp.util is missing: serve the rest
        if attr == "*":
            names.update(_public_names(module))
        elif attr is None:
            names[bound] = module
        elif hasattr(module, attr):
            names[bound] = getattr(module, attr)
    return names


def _missing_name(fullname, missing):
    def __getattr__(name):
        if name in missing:
            raise AttributeError(f"fastbp does not provide {name} (the book's {fullname}.{name})"
                                 " in this version")
        raise AttributeError(f"module {fullname!r} has no attribute {name!r}")
    return __getattr__


class _BookLoader(importlib.abc.Loader):
    def create_module(self, spec):
        return None  # the default: a plain module object, filled in exec_module

    def exec_module(self, module):
        fullname = module.__name__
        if fullname == _PACKAGE:
            module.__doc__ = "The book's common package, served by fastbp (fastbp run)."
            return
        home_name, imports, own = BOOK_MODULES[fullname]
        home = _home(fullname)
        names = _imported_names(imports)
        missing = [name for name in own if not hasattr(home, name)]
        names.update({name: getattr(home, name) for name in own if name not in missing})
        vars(module).update(names)
        module.__getattr__ = _missing_name(fullname, missing)
        module.__doc__ = (f"The book's {fullname}, served by fastbp from {home_name}."
                          + (f" Not in this fastbp: {', '.join(missing)}." if missing else ""))


class BookFinder(importlib.abc.MetaPathFinder):
    """Answers every import of ``common`` and ``common.*`` from fastbp (see the module doc)."""

    _loader = _BookLoader()

    def find_spec(self, fullname, path=None, target=None):
        if not _is_book_name(fullname):
            return None
        if fullname == _PACKAGE:
            return importlib.machinery.ModuleSpec(fullname, self._loader, is_package=True)
        if fullname not in BOOK_MODULES:
            raise ModuleNotFoundError(
                f"No module named {fullname!r}: fastbp does not provide the book's {fullname} "
                f"(fastbp run serves {', '.join(BOOK_MODULES)})", name=fullname)
        home = _home(fullname)
        spec = importlib.machinery.ModuleSpec(fullname, self._loader,
                                              origin=getattr(home, "__file__", None))
        spec.has_location = spec.origin is not None
        return spec


def _forget_book_modules():
    return {name: sys.modules.pop(name) for name in list(sys.modules) if _is_book_name(name)}


def install():
    """Put a :class:`BookFinder` at the front of ``sys.meta_path`` (once), for good.

    Any ``common`` modules imported before are dropped from ``sys.modules``.
    """
    if not any(isinstance(f, BookFinder) for f in sys.meta_path):
        _forget_book_modules()
        sys.meta_path.insert(0, BookFinder())


@contextlib.contextmanager
def book_modules():
    """Serve ``common`` from fastbp inside a ``with`` block; restore what was there after."""
    saved = _forget_book_modules()
    finder = BookFinder()
    sys.meta_path.insert(0, finder)
    try:
        yield finder
    finally:
        sys.meta_path.remove(finder)
        _forget_book_modules()
        sys.modules.update(saved)


def _script_traceback(tb, code):
    """The traceback from the script's own frame on, as ``python SCRIPT`` shows it."""
    start = tb
    while start is not None and start.tb_frame.f_code is not code:
        start = start.tb_next
    return tb if start is None else start


def run_script(path, args=()):
    """Run the file ``path`` as ``python path *args`` would, with fastbp serving ``common``.

    Changes this process for good, as running a script does: ``sys.argv``, ``sys.path[0]``
    (the script's folder), ``sys.modules["__main__"]`` and ``sys.meta_path``.

    Parameters
    ----------
    path : str
        The script.
    args : sequence of str
        Its arguments (``sys.argv[1:]``).

    Returns
    -------
    int
        0 when the script ends, 1 when it raises (the traceback is printed to stderr).
        ``SystemExit`` (``sys.exit``) propagates.
    """
    abspath = os.path.abspath(path)
    with open(abspath, "rb") as f:  # bytes: compile honours the "# coding:" line
        source = f.read()
    try:
        code = compile(source, abspath, "exec", dont_inherit=True)
    except SyntaxError as exc:  # python prints these without a traceback
        exc.__traceback__ = None
        sys.excepthook(type(exc), exc, None)
        return 1

    install()
    main = types.ModuleType("__main__")
    main.__file__ = abspath
    main.__cached__ = None
    main.__builtins__ = builtins
    main.__loader__ = importlib.machinery.SourceFileLoader("__main__", abspath)
    sys.modules["__main__"] = main
    sys.argv = [path, *args]
    script_dir = os.path.dirname(os.path.realpath(abspath))
    if not getattr(sys.flags, "safe_path", False):  # python -P adds no script folder
        # sys.path[0] is the launcher's entry (the current folder under python -m, the folder
        # of the fastbp executable otherwise): the script's folder takes its place.
        if sys.path:
            sys.path[0] = script_dir
        else:
            sys.path.insert(0, script_dir)
    try:
        exec(code, vars(main))
    except Exception as exc:  # SystemExit and KeyboardInterrupt propagate as in python SCRIPT
        # The default hook prints exc.__traceback__ whatever tb it is given: trim that.
        exc.__traceback__ = _script_traceback(exc.__traceback__, code)
        sys.excepthook(type(exc), exc, exc.__traceback__)
        return 1
    return 0


def add_arguments(parser):
    """Add the arguments of ``fastbp run`` to an argparse (sub)parser."""
    parser.add_argument("script", metavar="SCRIPT",
                        help="a Python file written against the book's common package")
    parser.add_argument("args", nargs="*", default=[], metavar="ARGS",
                        help="the script's arguments (its sys.argv[1:]), passed as they are, "
                             "'--' included")


def run(args):
    """``fastbp run``: run ``args.script``; return its exit status."""
    if not os.path.isfile(args.script):
        print(f"fastbp run: can't open file {os.path.abspath(args.script)!r}", file=sys.stderr)
        return 2
    return run_script(args.script, args.args)
