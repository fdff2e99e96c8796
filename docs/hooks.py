"""mkdocs hook: the figures under ``results/`` (written by the benchmarks and suites) are
served as ``results/<name>.png`` beside the pages, without copying them into ``docs/``."""
import pathlib

from mkdocs.structure.files import File

ROOT = pathlib.Path(__file__).resolve().parents[1]


def on_files(files, config):
  for path in sorted((ROOT / "results").glob("*.png")):
    files.append(File(f"results/{path.name}", str(ROOT), config["site_dir"],
                      config["use_directory_urls"]))
  default = ROOT / "results" / "default" / "samples.png"
  if default.exists():
    files.append(File.generated(config, "results/default_samples.png",
                                abs_src_path=str(default)))
  return files
