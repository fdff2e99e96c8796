"""PRISM on CelebA (tfds; non-IID by the Male attribute) in the paper's settings; see experiments/setting.py.

  python -m experiments.celeb_a --setting=dirichlet[,dp][,alpha][,nomada][,fedpm|fedavg][,cpu|smoke]
"""
from experiments import setting

if __name__ == "__main__":
  setting.main("celeb_a")
