"""PRISM on Fashion-MNIST (tfds) in the paper's settings; see experiments/setting.py.

  python -m experiments.fashion_mnist --setting=dirichlet[,dp][,alpha][,nomada][,fedpm|fedavg][,cpu|smoke]
"""
from experiments import setting

if __name__ == "__main__":
  setting.main("fashion_mnist")
