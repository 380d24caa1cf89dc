#!/usr/bin/env bash
# Installs the package with its train extra into .venv, then runs the main job on its built-in default: train
# mobilevit_xxs on Fashion-MNIST (configs/fashion_mnist.yaml; its accuracy and time: docs/benchmarks.md),
# then evaluate it on the 10,000 test images and print the accuracy.
source "$(dirname "$0")/env.sh" train  # the training extra (and not this script's arguments)
mobilevit train --config configs/fashion_mnist.yaml "$@"
mobilevit eval --checkpoint runs/fashion_mnist/model
