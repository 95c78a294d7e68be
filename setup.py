"""Ships the repository's configs/*.yaml presets inside the wheel as ssp/configs/, so `ssp train -c tiny` resolves
by name after `pip install`. configs/ stays the one copy in the repository; everything else is in pyproject.toml."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithPresets(build_py):
    def run(self):
        super().run()
        target = Path(self.build_lib) / "ssp" / "configs"
        self.mkpath(str(target))
        for preset in sorted(Path(__file__).resolve().parent.glob("configs/*.yaml")):
            self.copy_file(str(preset), str(target / preset.name))


setup(cmdclass={"build_py": BuildWithPresets})
