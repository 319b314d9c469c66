"""Importing friendly_sam, or an integration module that does not subclass a framework class, imports no
framework: users without Lightning/transformers/accelerate/timm are unaffected."""

from __future__ import annotations

import subprocess
import sys

FRAMEWORKS = ("pytorch_lightning", "lightning", "transformers", "accelerate", "timm", "torchvision")


def test_importing_friendly_sam_and_its_integrations_imports_no_framework():
    code = (
        "import sys\n"
        "import friendly_sam, friendly_sam.integrations\n"
        "import friendly_sam.integrations.lightning, friendly_sam.integrations.accelerate\n"
        "import friendly_sam.integrations.timm\n"
        f"print(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_register_timm_without_timm_says_what_to_install():
    code = (
        "import sys\n"
        "sys.modules['timm'] = None  # as if timm were not installed\n"
        "from friendly_sam.integrations.timm import register_timm\n"
        "try:\n"
        "    register_timm()\n"
        "except ImportError as err:\n"
        "    print(err)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "pip install timm" in out.stdout, out.stderr
