"""PRISM on CIFAR-10 (tfds) in the paper's settings; see experiments/setting.py.

  python -m experiments.cifar10 --setting=dirichlet[,dp][,alpha][,nomada][,fedpm|fedavg][,cpu|smoke]
"""
from experiments import setting

if __name__ == "__main__":
  setting.main("cifar10")
