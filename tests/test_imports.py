import subprocess
import sys


def test_packages_import_without_parsing_or_defining_flags():
    code = (
        "import algoperf, models, parallel, rl, scripts\n"
        "import training.data.text, algoperf.data.mnist1d, models.transformer\n"
        "import parallel.mesh, parallel.sharding, parallel.checkpoint, scripts.common, scripts.train_lm\n"
        "from absl import flags\n"
        "assert not flags.FLAGS.is_parsed()\n"
        "assert 'batch_size' not in flags.FLAGS and 'workdir' not in flags.FLAGS, 'library defined flags'\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")
