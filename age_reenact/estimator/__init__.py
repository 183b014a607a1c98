"""Age estimators: the project's ResNet, AgeTransGAN's VGGFace2 ResNet-50 and the benchmark layout."""
