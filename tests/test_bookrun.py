"""``fastbp run``: book scripts run unmodified, with fastbp serving the book's ``common``."""

import importlib
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastbp.functions
import fastbp.gradient
import fastbp.layers
import fastbp.nets
import fastbp.optim
import fastbp.trainer
from fastbp import bookrun

DECOY = 'raise RuntimeError("decoy common imported: " + __name__)\n'

# The book's modules, and what each gives ``import *``: every public top-level name, the ones
# it imports included. Written out from the book's sources, independently of bookrun's table.
BOOK_FUNCTIONS = {"np", "identity_function", "step_function", "sigmoid", "sigmoid_grad", "relu",
                  "relu_grad", "softmax", "sum_squared_error", "cross_entropy_error",
                  "softmax_loss"}
BOOK_LAYERS = BOOK_FUNCTIONS | {"im2col", "col2im", "Relu", "Sigmoid", "Affine",
                                "SoftmaxWithLoss", "Dropout", "BatchNormalization",
                                "Convolution", "Pooling"}
BOOK_OPTIMIZER = {"np", "SGD", "Momentum", "Nesterov", "AdaGrad", "RMSprop", "Adam"}
BOOK_STAR = {
    "common.functions": BOOK_FUNCTIONS,
    "common.layers": BOOK_LAYERS,
    "common.util": {"np", "smooth_curve", "shuffle_dataset", "conv_output_size", "im2col",
                    "col2im"},
    "common.gradient": {"np", "numerical_gradient_2d", "numerical_gradient"},
    "common.optimizer": BOOK_OPTIMIZER,
    "common.multi_layer_net": BOOK_LAYERS | {"sys", "os", "OrderedDict", "numerical_gradient",
                                             "MultiLayerNet"},
    "common.multi_layer_net_extend": BOOK_LAYERS | {"sys", "os", "OrderedDict",
                                                    "numerical_gradient", "MultiLayerNetExtend"},
    "common.trainer": BOOK_OPTIMIZER | {"sys", "os", "Trainer"},
}
# Where fastbp keeps each name, so that a name another part of fastbp has not added yet is
# expected to be absent, and present once it lands.
FASTBP_HOME = {
    **{name: "fastbp.functions" for name in BOOK_FUNCTIONS - {"np"}},
    **{name: "fastbp.layers" for name in ("Relu", "Sigmoid", "Affine", "SoftmaxWithLoss",
                                          "Dropout", "BatchNormalization", "Convolution",
                                          "Pooling")},
    **{name: "fastbp.util" for name in ("smooth_curve", "shuffle_dataset", "conv_output_size",
                                        "im2col", "col2im")},
    **{name: "fastbp.optim" for name in BOOK_OPTIMIZER - {"np"}},
    "numerical_gradient": "fastbp.gradient", "numerical_gradient_2d": "fastbp.gradient",
    "MultiLayerNet": "fastbp.nets", "MultiLayerNetExtend": "fastbp.nets",
    "Trainer": "fastbp.trainer",
}
HAS_UTIL = importlib.util.find_spec("fastbp.util") is not None


def fastbp_has(name):
    home = FASTBP_HOME.get(name)
    if home is None:  # np, sys, os, OrderedDict
        return True
    if home == "fastbp.util" and not HAS_UTIL:
        return False
    return hasattr(importlib.import_module(home), name)


@pytest.fixture
def book(tmp_path):
    """A book-like checkout: ``common/`` full of decoys, ``dataset/``, and ``ch06/``."""
    for folder in (tmp_path / "common", tmp_path / "ch06" / "common"):
        folder.mkdir(parents=True)
        for name in ("__init__", *(m.split(".")[1] for m in bookrun.BOOK_MODULES),
                     "np_compat"):
            (folder / f"{name}.py").write_text(DECOY)
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "__init__.py").write_text("")
    (tmp_path / "dataset" / "mnist.py").write_text(textwrap.dedent("""\
        import numpy as np

        def load_mnist(normalize=True):
            rng = np.random.default_rng(0)
            x = rng.standard_normal((80, 4))
            t = (x[:, 0] > x[:, 1]).astype(int)
            return (x[:60], t[:60]), (x[60:], t[60:])
        """))
    return tmp_path


def write(path, code):
    path.write_text(textwrap.dedent(code))
    return path


def fastbp_run(cwd, *argv):
    return subprocess.run([sys.executable, "-m", "fastbp", "run", *argv], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_script_gets_fastbp_and_runs_as_under_python(book):
    write(book / "ch06" / "facts.py", """\
        # coding: utf-8
        import sys, os
        sys.path.append(os.pardir)  # the book's line: puts the decoy common/ on the path
        import json
        import common
        from common.layers import *
        from common.functions import softmax
        from common.optimizer import SGD
        from common.multi_layer_net import MultiLayerNet
        from common.trainer import Trainer
        from common.gradient import numerical_gradient
        import common.layers

        print(json.dumps({
            "argv": sys.argv, "name": __name__, "file": __file__, "path0": sys.path[0],
            "main_file": sys.modules["__main__"].__file__,
            "classes": [type(c).__module__ + "." + type(c).__qualname__
                        for c in (SoftmaxWithLoss(), Affine(np.eye(2), 0), Relu())],
            "softmax": softmax.__module__, "sgd": SGD.__module__,
            "net": MultiLayerNet.__module__, "trainer": Trainer.__module__,
            "gradient": numerical_gradient.__module__,
            "package": common.__name__, "attribute": common.layers is sys.modules["common.layers"],
        }))
        """)
    proc = fastbp_run(book / "ch06", "facts.py", "a", "--help", "-x")
    assert proc.returncode == 0, proc.stderr
    assert "decoy" not in proc.stderr
    facts = json.loads(proc.stdout)
    assert facts["argv"] == ["facts.py", "a", "--help", "-x"]
    assert facts["name"] == "__main__"
    assert facts["file"] == facts["main_file"] == str(book / "ch06" / "facts.py")
    assert facts["path0"] == os.path.realpath(book / "ch06")
    assert facts["classes"] == ["fastbp.layers.SoftmaxWithLoss", "fastbp.layers.Affine",
                                "fastbp.layers.Relu"]
    assert facts["softmax"] == "fastbp.functions" and facts["sgd"] == "fastbp.optim"
    assert facts["net"] == "fastbp.nets" and facts["trainer"] == "fastbp.trainer"
    assert facts["gradient"] == "fastbp.gradient"
    assert facts["package"] == "common" and facts["attribute"] is True

    # The decoys are live: plain python imports them and fails.
    plain = subprocess.run([sys.executable, "facts.py"], cwd=book / "ch06",
                           capture_output=True, text=True, timeout=300)
    assert plain.returncode == 1 and "decoy common imported" in plain.stderr


def test_script_path_from_another_folder(book):
    write(book / "ch06" / "where.py", """\
        import sys, json
        print(json.dumps([sys.argv, __file__, sys.path]))
        """)
    proc = fastbp_run(book, os.path.join("ch06", "where.py"))
    assert proc.returncode == 0, proc.stderr
    argv, file, path = json.loads(proc.stdout)
    assert argv == [os.path.join("ch06", "where.py")]
    assert file == str(book / "ch06" / "where.py")
    assert path[0] == os.path.realpath(book / "ch06")
    # python -m put the current folder first; as under python SCRIPT, it is gone.
    assert not {"", ".", str(book), os.path.realpath(book)} & set(path)


@pytest.mark.parametrize("args", [["--", "a"], ["a", "--"], ["--", "--", "-h", "--lr", "3"]],
                         ids=["leading --", "trailing --", "options"])
def test_the_scripts_arguments_are_passed_as_python_passes_them(tmp_path, args):
    """Everything after SCRIPT, '--' included (argparse dropped the first '--')."""
    write(tmp_path / "argv.py", "import sys, json\nprint(json.dumps(sys.argv))\n")
    proc = fastbp_run(tmp_path, "argv.py", *args)
    plain = subprocess.run([sys.executable, "argv.py", *args], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == json.loads(plain.stdout) == ["argv.py", *args]


def test_book_style_training_with_chapter_modules_and_dataset(book):
    # A chapter-local module in the book's style gets fastbp's layers through its own imports;
    # dataset.mnist comes from the checkout, as usual.
    write(book / "ch06" / "tiny_net.py", """\
        import sys, os
        sys.path.append(os.pardir)
        from common.layers import *

        def layer_modules():
            return {type(l).__module__ for l in (Affine(np.eye(2), 0), SoftmaxWithLoss())}
        """)
    write(book / "ch06" / "train.py", """\
        import sys, os
        sys.path.append(os.pardir)
        import numpy as np
        from dataset.mnist import load_mnist
        from common.multi_layer_net import MultiLayerNet
        from common.trainer import Trainer
        from tiny_net import layer_modules

        (x_train, t_train), (x_test, t_test) = load_mnist(normalize=True)
        np.random.seed(0)
        network = MultiLayerNet(input_size=4, hidden_size_list=[8], output_size=2)
        trainer = Trainer(network, x_train, t_train, x_test, t_test, epochs=2,
                          mini_batch_size=30, optimizer='Adam', optimizer_param={'lr': 0.01})
        trainer.train()
        print(sorted(layer_modules()), type(network.last_layer).__module__,
              type(trainer.optimizer).__module__)
        """)
    proc = fastbp_run(book / "ch06", "train.py")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("train loss:")
    assert lines[1].startswith("=== epoch:1, train acc:")
    assert lines.count("=============== Final Test Accuracy ===============") == 1
    assert lines[-1] == "['fastbp.layers'] fastbp.layers fastbp.optim"


def test_import_star_carries_what_the_books_modules_import(book):
    write(book / "ch06" / "star.py", """\
        import sys, os
        sys.path.append(os.pardir)
        from common.optimizer import *
        print(np.__name__, SGD.__module__)
        from common.layers import *
        print(cross_entropy_error.__module__, sigmoid(np.zeros(1))[0])
        from common.trainer import *
        print(sys.__name__, os.__name__, Trainer.__module__, Adam.__module__)
        """)
    proc = fastbp_run(book / "ch06", "star.py")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["numpy fastbp.optim",
                                        "fastbp.reference.functions 0.5",
                                        "sys os fastbp.trainer fastbp.optim"]


@pytest.mark.parametrize("name", list(BOOK_STAR))
def test_served_module_star_names_are_the_books(name):
    expected = {n for n in BOOK_STAR[name] if fastbp_has(n)}
    with bookrun.book_modules():
        if name == "common.util" and not HAS_UTIL:
            with pytest.raises(ModuleNotFoundError, match=r"fastbp\.util"):
                importlib.import_module(name)
            return
        module = importlib.import_module(name)
        star = {}
        exec(f"from {name} import *", star)
    assert set(star) - {"__builtins__"} == expected
    assert star["np"] is np
    for n in expected - {"np", "sys", "os", "OrderedDict"}:
        assert star[n] is getattr(importlib.import_module(FASTBP_HOME[n]), n), n
    assert module.__name__ == name
    assert module is not importlib.import_module(bookrun.BOOK_MODULES[name][0])


def test_fastbp_modules_keep_their_own_names():
    before = {m.__name__: set(vars(m)) for m in (fastbp.layers, fastbp.functions, fastbp.optim,
                                                fastbp.nets, fastbp.trainer, fastbp.gradient)}
    with bookrun.book_modules():
        for name in bookrun.BOOK_MODULES:
            try:
                importlib.import_module(name)
            except ModuleNotFoundError:
                pass
    after = {m.__name__: set(vars(m)) for m in (fastbp.layers, fastbp.functions, fastbp.optim,
                                               fastbp.nets, fastbp.trainer, fastbp.gradient)}
    assert before == after
    assert "np" not in fastbp.optim.__all__ and "np" not in fastbp.layers.__all__


def test_book_modules_restores_the_import_state(tmp_path, monkeypatch):
    (tmp_path / "common").mkdir()
    (tmp_path / "common" / "__init__.py").write_text("REAL = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "common", raising=False)
    meta_path = list(sys.meta_path)
    with bookrun.book_modules():
        import common
        assert not hasattr(common, "REAL")
        assert importlib.import_module("common.layers").Affine is fastbp.layers.Affine
    assert sys.meta_path == meta_path
    assert "common.layers" not in sys.modules
    import common
    assert common.REAL
    del sys.modules["common"]


def test_a_missing_fastbp_module_fails_only_its_book_module(monkeypatch):
    monkeypatch.setitem(bookrun.BOOK_MODULES, "common.util",
                        ("fastbp._no_such_module", ("np",), ("im2col",)))
    with bookrun.book_modules():
        with pytest.raises(ModuleNotFoundError, match=r"common\.util.*fastbp\._no_such_module"):
            importlib.import_module("common.util")
        layers = importlib.import_module("common.layers")  # serves the rest
        assert layers.Affine is fastbp.layers.Affine and not hasattr(layers, "im2col")


def test_a_name_fastbp_lacks_says_so(monkeypatch):
    monkeypatch.setitem(bookrun.BOOK_MODULES, "common.optimizer",
                        ("fastbp.optim", (), ("SGD", "NoSuchOptimizer")))
    with bookrun.book_modules():
        module = importlib.import_module("common.optimizer")
        assert module.SGD is fastbp.optim.SGD
        with pytest.raises(AttributeError, match="fastbp does not provide NoSuchOptimizer"):
            module.NoSuchOptimizer  # noqa: B018
        with pytest.raises(ImportError, match="NoSuchOptimizer"):
            exec("from common.optimizer import NoSuchOptimizer", {})


def test_unknown_common_module_names_it(book):
    write(book / "ch06" / "compat.py", """\
        import sys, os
        sys.path.append(os.pardir)
        from common.np_compat import anything
        """)
    proc = fastbp_run(book / "ch06", "compat.py")
    assert proc.returncode == 1
    assert "decoy" not in proc.stderr
    last = proc.stderr.splitlines()[-1]
    assert last.startswith("ModuleNotFoundError: No module named 'common.np_compat'")
    assert "fastbp does not provide" in last
    assert f'File "{book / "ch06" / "compat.py"}", line 3, in <module>' in proc.stderr


@pytest.mark.parametrize(("code", "status", "stderr"), [
    ("print('done')", 0, ""),
    ("import sys; sys.exit(3)", 3, ""),
    ("import sys; sys.exit('bye')", 1, "bye\n"),
    ("raise SystemExit(0)", 0, ""),
])
def test_exit_status_propagates(book, code, status, stderr):
    write(book / "ch06" / "leave.py", code)
    proc = fastbp_run(book / "ch06", "leave.py")
    assert proc.returncode == status
    assert proc.stderr == stderr


def test_an_exception_prints_the_scripts_traceback(book):
    script = write(book / "ch06" / "boom.py", """\
        def f():
            raise ValueError("boom")

        f()
        """)
    proc = fastbp_run(book / "ch06", "boom.py")
    plain = subprocess.run([sys.executable, "boom.py"], cwd=book / "ch06", capture_output=True,
                           text=True, timeout=300)
    assert proc.returncode == plain.returncode == 1
    assert proc.stderr == plain.stderr  # the same traceback, line for line
    assert proc.stderr.splitlines()[:2] == ["Traceback (most recent call last):",
                                            f'  File "{script}", line 4, in <module>']
    assert "bookrun" not in proc.stderr


def test_a_syntax_error_is_reported_as_python_does(book):
    write(book / "ch06" / "broken.py", "x = (\n")
    proc = fastbp_run(book / "ch06", "broken.py")
    plain = subprocess.run([sys.executable, "broken.py"], cwd=book / "ch06",
                           capture_output=True, text=True, timeout=300)
    assert proc.returncode == plain.returncode == 1
    assert proc.stderr == plain.stderr
    assert "SyntaxError" in proc.stderr and "Traceback" not in proc.stderr


def test_a_missing_script(tmp_path):
    proc = fastbp_run(tmp_path, "nowhere.py")
    assert proc.returncode == 2
    assert "can't open file" in proc.stderr and "nowhere.py" in proc.stderr


@pytest.mark.skipif(not hasattr(fastbp.nets, "MultiLayerNetExtend")
                    or not hasattr(fastbp.layers, "Dropout"),
                    reason="fastbp.nets.MultiLayerNetExtend / fastbp.layers.Dropout not here yet")
def test_multi_layer_net_extend_with_dropout(book):
    write(book / "ch06" / "dropout.py", """\
        import sys, os
        sys.path.append(os.pardir)
        import numpy as np
        from dataset.mnist import load_mnist
        from common.multi_layer_net_extend import MultiLayerNetExtend
        from common.layers import Dropout
        from common.trainer import Trainer

        (x_train, t_train), (x_test, t_test) = load_mnist(normalize=True)
        np.random.seed(0)
        network = MultiLayerNetExtend(input_size=4, hidden_size_list=[8, 8], output_size=2,
                                      use_dropout=True, dropout_ration=0.2)
        trainer = Trainer(network, x_train, t_train, x_test, t_test, epochs=2,
                          mini_batch_size=20, optimizer='sgd', optimizer_param={'lr': 0.01},
                          verbose=True)
        trainer.train()
        print(type(network).__module__, type(network.layers["Dropout1"]).__module__,
              Dropout.__module__)
        """)
    proc = fastbp_run(book / "ch06", "dropout.py")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "fastbp.nets fastbp.layers fastbp.layers"
