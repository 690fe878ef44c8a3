"""torch.hub entry point: ``torch.hub.load("<owner>/catdog", "catdog_cnn", pretrained=True)``, or a local checkout
with ``source="local"``."""

dependencies = ["torch", "safetensors", "PIL"]


def catdog_cnn(pretrained: bool = True, device: str = "cpu"):
    """The seed's cats-vs-dogs CNN (3,453,121 parameters) in eval mode, with catdog's shipped weights.

    Preprocess as it was trained: decode to RGB, resize to 150 x 150 ignoring the aspect ratio (PIL, bilinear for
    the shipped weights: ``model.preprocessing`` says which), scale to [0, 1] (``/ 255``), no mean or std; input
    (N, 3, 150, 150). The output is one logit per image: ``sigmoid(logit)`` is the probability of "dog" (cats=0,
    dogs=1). ``model.preprocessing(path)`` does all of it for a file::

        model = torch.hub.load("<owner>/catdog", "catdog_cnn", pretrained=True)
        p_dog = torch.sigmoid(model(model.preprocessing("cat.jpg")[None]))

    ``pretrained=False`` gives the untrained network (Keras initialisation).
    """
    # imported here: torch.hub imports this file first, then checks ``dependencies``, which names what is missing
    from catdog.weights import load_weights

    weights = load_weights("pretrained" if pretrained else "none")
    model = weights.model(device)
    model.preprocessing = weights.preprocessing
    return model
