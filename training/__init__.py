"""The embedded default model's training code (`make train-default-model`): the scene renderer, the training
script, the pixel statistics that score what a model draws, and the word tokenizer. It never ships: the wheel and the
container image hold sdapi/ and export/ only."""
