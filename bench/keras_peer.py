"""The Keras seed, for ``bench/run.py`` to time as a peer. Runs in a separate environment with Keras 3 and
TensorFlow (see bench/run.py); prints one JSON line.

    python keras_peer.py step --batch 20 --repeats 10
    python keras_peer.py epoch --folder DIR --batch 20
    python keras_peer.py predict --folder DIR --batch 20     (model.predict over flow_from_directory, class_mode=None)
    python keras_peer.py save --model seed.keras
    python keras_peer.py visualize --model seed.keras --image cat.jpg --out DIR     (the seed's step 4, timed whole)
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def seed_model():
    import keras
    from keras import layers

    model = keras.Sequential(
        [
            keras.Input((150, 150, 3)),
            layers.Conv2D(32, (3, 3), activation="relu"),
            layers.MaxPooling2D((2, 2)),
            layers.Conv2D(64, (3, 3), activation="relu"),
            layers.MaxPooling2D((2, 2)),
            layers.Conv2D(128, (3, 3), activation="relu"),
            layers.MaxPooling2D((2, 2)),
            layers.Conv2D(128, (3, 3), activation="relu"),
            layers.MaxPooling2D((2, 2)),
            layers.Flatten(),
            layers.Dense(512, activation="relu"),
            layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(loss="binary_crossentropy", optimizer=keras.optimizers.RMSprop(learning_rate=1e-3), metrics=["acc"])
    return model


def step(batch: int, repeats: int) -> dict:
    """Median img/s of ``train_on_batch`` (the compiled training step) on random data."""
    import numpy as np

    model = seed_model()
    x = np.random.rand(batch, 150, 150, 3).astype("float32")
    y = np.random.randint(0, 2, (batch, 1)).astype("float32")
    for _ in range(3):
        model.train_on_batch(x, y)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - start)
    return {"img_per_s": batch / sorted(times)[len(times) // 2]}


def epoch(folder: str, batch: int) -> dict:
    """The seed's ``fit`` on ``flow_from_directory`` (JPEG files -> 150x150 -> 1/255): img/s of the second of two
    epochs, as bench/run.py times catdog's."""
    import keras

    try:
        from keras.preprocessing.image import ImageDataGenerator
    except ImportError:  # newer Keras 3 keeps the seed's generator only here
        from keras.src.legacy.preprocessing.image import ImageDataGenerator

    generator = ImageDataGenerator(rescale=1.0 / 255).flow_from_directory(
        folder, target_size=(150, 150), batch_size=batch, class_mode="binary"
    )
    seconds = []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(time.perf_counter() - self.start)

    seed_model().fit(generator, epochs=2, verbose=0, callbacks=[EpochTimer()])
    return {"img_per_s": generator.samples / seconds[-1], "images": generator.samples}


def visualize(model_path: str, image_path: str, out: str) -> dict:
    """The seed's step 4: load the model, one image, the first 8 layers' outputs, one grid PNG per layer."""
    import keras
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from keras.preprocessing import image

    model = keras.models.load_model(model_path)
    img = image.load_img(image_path, target_size=(150, 150))
    img_tensor = np.expand_dims(image.img_to_array(img), axis=0) / 255.0
    activation_model = keras.Model(inputs=model.inputs, outputs=[layer.output for layer in model.layers[:8]])
    activations = activation_model.predict(img_tensor, verbose=0)
    os.makedirs(out, exist_ok=True)
    for index, activation in enumerate(activations):
        size, channels = activation.shape[1], activation.shape[-1]
        cols = channels // 16
        grid = np.zeros((size * cols, 16 * size))
        for col in range(cols):
            for row in range(16):
                channel = activation[0, :, :, col * 16 + row].copy()
                channel = np.clip((channel - channel.mean()) / (channel.std() + 1e-5) * 64 + 128, 0, 255)
                grid[col * size : (col + 1) * size, row * size : (row + 1) * size] = channel
        plt.figure(figsize=(grid.shape[1] / size, grid.shape[0] / size))
        plt.title(model.layers[index].name)
        plt.imshow(grid, aspect="auto", cmap="viridis")
        plt.savefig(os.path.join(out, f"{model.layers[index].name}.png"))
        plt.close()
    return {}


def predict(folder: str, batch: int) -> dict:
    """The seed's way to classify a folder: ``model.predict`` over ``flow_from_directory(class_mode=None)``."""
    try:
        from keras.preprocessing.image import ImageDataGenerator
    except ImportError:
        from keras.src.legacy.preprocessing.image import ImageDataGenerator

    model = seed_model()
    generator = ImageDataGenerator(rescale=1.0 / 255).flow_from_directory(
        folder, target_size=(150, 150), batch_size=batch, class_mode=None, shuffle=False
    )
    return {"images": int(model.predict(generator, verbose=0).shape[0])}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["step", "epoch", "predict", "save", "visualize"])
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--folder")
    parser.add_argument("--model")
    parser.add_argument("--image")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.mode == "step":
        result = step(args.batch, args.repeats)
    elif args.mode == "epoch":
        result = epoch(args.folder, args.batch)
    elif args.mode == "predict":
        result = predict(args.folder, args.batch)
    elif args.mode == "save":
        seed_model().save(args.model)
        result = {}
    else:
        result = visualize(args.model, args.image, args.out)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
