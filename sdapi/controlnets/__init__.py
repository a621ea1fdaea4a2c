"""ControlNet: the models in controlnet.dir (library.py), the preprocessors that turn a picture into what a model
follows (preprocess.py), and loading and running the models beside a torch pipeline (running.py)."""
