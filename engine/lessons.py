"""The lessons gallery: classic experiments, each a problem next to its cure.

A lesson names two or more built-in scenarios (``engine.scenarios``): the first shows the problem,
the others the cure (or the alternatives). The app runs any of them on its own, or the first two
side by side; ``glassbox report --scenario NAME`` runs each headless. ``outcome`` states in one
line what a user should see, and ``tests/engine/test_lessons.py`` checks exactly that.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Lesson", "LESSONS", "lesson_for_scenario"]


@dataclass(frozen=True, slots=True)
class Lesson:
    """One experiment of the gallery.

    Attributes:
        name: short key ("learning-rate").
        title: what the menu shows.
        runs: scenario names, the problem first.
        explanation: a few short paragraphs of plain text, separated by blank lines.
        outcome: what to expect, in one sentence.
        watch: the views (dock keys of the app) that show the effect, most telling first.
        steps: about how many steps the effect needs to show.
    """

    name: str
    title: str
    runs: tuple[str, ...]
    explanation: str
    outcome: str
    watch: tuple[str, ...]
    steps: int = 300


_LIST = (
    Lesson(
        "xor", "XOR needs a hidden layer", ("xor-linear", "xor-mlp"),
        "XOR puts one class in the top-right and bottom-left quadrants and the other class in "
        "the remaining two. A network without a hidden layer computes a weighted sum of the two "
        "coordinates, so its decision boundary is a single straight line, and every straight line "
        "leaves at least one quadrant on the wrong side.\n\n"
        "Add one hidden layer of a few tanh units and each unit contributes its own line; the "
        "output layer combines them into a bent boundary that can wrap around the quadrants.",
        "Without a hidden layer the loss stays at about 0.69 (log 2, a coin toss) and accuracy "
        "near 50 %; with one, accuracy passes 95 % within a few hundred steps.",
        ("boundary", "loss"), 400),
    Lesson(
        "vanishing-gradients", "Vanishing gradients: sigmoid vs ReLU", ("deep-sigmoid", "deep-relu-he"),
        "On its way back to the input, backpropagation scales the error signal at every layer by "
        "that layer's weights and by the slope of its activation. A sigmoid's slope is never above "
        "0.25, and with PyTorch's default weights each sigmoid layer here shrinks the signal about "
        "sevenfold: ten layers down, the first layer's gradient is around a billion times smaller "
        "than the last one's. The forward pass fades the same way, so the output barely depends "
        "on the input any more, and the network stalls at chance.\n\n"
        "ReLU's slope is exactly 1 wherever a unit is active, and He initialization sizes the "
        "weights so the signal keeps its scale from layer to layer. Compare the gradient-flow bars: "
        "for sigmoid a steep staircase, each layer's bar about seven times shorter than the next "
        "one's; for ReLU roughly level, the first layer's bar mostly within a factor of ten of the "
        "last one's.",
        "The sigmoid stack's first-layer gradient norm is below 1e-4 of its last layer's and it "
        "stays at chance; the ReLU stack learns the circles.",
        ("gradients", "health", "loss"), 300),
    Lesson(
        "initialization", "Initialization: too small, just right, too large, all zeros",
        ("init-he-half", "init-he", "init-he-double", "init-zeros"),
        "In a stack of ReLU layers every layer multiplies the spread of its input by a factor set "
        "by the size of its weights. He initialization picks weights with variance 2 / fan-in, "
        "which makes that factor about 1.\n\n"
        "Halve the weights and each layer halves the spread: after fifty layers the activations' "
        "spread is about 1e-16 of the input's, and the output depends on the input only that "
        "weakly. Double them and the spread doubles fifty times over: the first step's numbers "
        "reach about 1e14, its update is larger than the weights by a factor of about 1e11, and "
        "from the second step on everything is NaN.\n\n"
        "All-zero weights fail differently. With ReLU every hidden output is then zero, exactly "
        "where ReLU's slope is zero, so no weight gets any gradient and only the output bias can "
        "move. Any constant start has the deeper flaw: every unit of a layer computes the same "
        "value and gets the same gradient, so they stay identical forever. Random initialization "
        "exists to break that symmetry.",
        "At the first step the last layer's activation spread is below 1e-3 of the input's with "
        "He × 0.5 (about 1e-16) and above 1e3 with He × 2 (about 1e14), whose loss is NaN from the "
        "second step on; with He × 1 it stays of the input's order (between about 1/20 and 2 of "
        "it, depending on the seed) and the stack trains; all-zero weights get a symmetry diagnosis.",
        ("activations", "health", "gradients"), 200),
    Lesson(
        "learning-rate", "Learning rate: too small, right, too large, clipped",
        ("lr-too-large", "lr-clipped", "lr-right", "lr-too-small"),
        "The learning rate sets how far each update moves the weights along the negative gradient. "
        "A useful rule of thumb: each update should change a layer's weights by about a thousandth "
        "of their size (the update ratio in the gradient-flow view).\n\n"
        "Too small and the loss creeps down so slowly that training seems stuck. Too large and "
        "an update overshoots the valley it was meant to descend into, landing higher than it "
        "started; the loss explodes, or ReLU units are thrown into the region where they never "
        "fire again.\n\n"
        "Gradient clipping caps the length of the gradient before the update, so even a large "
        "learning rate can only move the weights a bounded distance per step.",
        "SGD with learning rate 10 sends the loss up more than a thousandfold within a few steps "
        "and stays at chance; the same rate with clipping at 0.05 trains, and reaches 95 % "
        "validation accuracy sooner than learning rate 0.1 does; 1e-4 barely moves the loss.",
        ("loss", "gradients", "health"), 300),
    Lesson(
        "recurrent", "Memory through time: RNN vs LSTM", ("long-range-rnn", "long-range-lstm"),
        "A recurrent network reads a sequence one token at a time and carries a hidden state from "
        "step to step. Training it means backpropagating through every step, so the gradient is "
        "multiplied by the recurrent weights and the tanh derivative once per step: over thirty "
        "steps it fades away, and a plain RNN cannot learn that the answer hinges on the first "
        "token.\n\n"
        "An LSTM adds a cell state that is updated by addition and guarded by gates. While its "
        "forget gate stays open, information and gradient pass through many steps almost "
        "unchanged.",
        "The LSTM's validation accuracy passes 90 % within about 400 steps, often in a sudden jump "
        "after a long stretch at 50 % (on some seeds it later dips back for a while); the tanh RNN "
        "stays near 50 % throughout.",
        ("loss", "gradients"), 1200),
    Lesson(
        "regularization", "Overfitting and regularization",
        ("overfit-mlp", "overfit-weight-decay", "overfit-dropout"),
        "A network with far more parameters than training examples can memorise them, noise and "
        "all. The training loss keeps falling, but from some step on the validation loss, measured "
        "on examples the network never trains on, turns around and rises: the model is learning "
        "the noise. The dashed line in the loss view marks the step where validation loss was "
        "lowest, the point early stopping would keep. The Health panel says so too, with an "
        "overfitting warning, once the validation loss has stayed above 1.5 times its lowest for "
        "five passes in a row while the training loss fell below half of what it was then.\n\n"
        "Weight decay adds a penalty on the size of the weights, favouring smooth functions. "
        "Dropout switches off a random half of the units at every step, so no unit can depend on "
        "a particular partner. Both trade a little training accuracy for better generalization.",
        "Without regularization the validation loss is lowest within the first fifty steps and "
        "ends about ten times higher, while the training loss approaches zero; with weight decay "
        "it stays close to its minimum; with dropout it still climbs, but ends about five times "
        "lower than without.",
        ("loss", "boundary"), 1000),
    Lesson(
        "normalization", "Normalization: BatchNorm in a deep MLP", ("deep-relu-plain", "deep-relu-batchnorm"),
        "PyTorch's default initialization gives ReLU layers weights about six times too small in "
        "variance, which a shallow network shrugs off. Twenty layers compound it: the part of each "
        "layer's output that depends on the input shrinks about 2.5 times per layer (the biases "
        "keep the overall spread near a constant), so the output barely depends on the input and "
        "the loss sits at log 2.\n\n"
        "Batch normalization standardises each unit's output over the batch (zero mean, unit "
        "spread) before a learned scale and shift. Whatever the weights do, every layer receives "
        "well-scaled input, and the same twenty layers train.",
        "Without BatchNorm the loss stays near 0.69; with it the spirals are learned (accuracy "
        "above 90 % within 600 steps).",
        ("activations", "loss", "gradients"), 600),
    Lesson(
        "cnn-features", "Convolutions: what a CNN sees", ("shapes-mlp", "shapes-cnn"),
        "A convolutional layer slides the same small filter over every position of the image, "
        "so a pattern learned in one place is recognised everywhere. Its output is one feature "
        "map per filter: bright where the filter's pattern appears.\n\n"
        "Small random filters already respond to edges and strokes, so the first layer's feature "
        "maps outline the shape from the first step; training mostly tunes them and the layers "
        "after them.\n\n"
        "An MLP treats each pixel as a separate input and must learn a shape anew at every "
        "position. On the 1,600 training drawings (the other 400 of the 2,000 are held out) it "
        "does about as well as the CNN: with enough weights it can memorise them. The difference "
        "shows on drawings neither has seen, the validation curves in the Loss view.",
        "Both training losses fall to near zero. On the held-out drawings the CNN is ahead from "
        "step 100 on and passes 90 % accuracy by step 200, while the MLP levels off around 85 % "
        "and its validation loss creeps back up. The CNN's feature maps light up along the "
        "edges of the drawn shape.",
        ("features", "loss"), 500),
    Lesson(
        "attention", "Attention: learning where to look", ("reverse-transformer", "copy-transformer"),
        "Self-attention lets every position of a sequence read from every other position, with "
        "weights the model computes from the data. To reverse a sequence, output position i must "
        "read input position T - 1 - i. Watch the attention maps of the last layer: the weight "
        "gathers on that anti-diagonal.\n\n"
        "Copying needs no attention at all: the residual connection already carries each token "
        "to its own output position, so the copy model's maps stay diffuse. Attention learns an "
        "alignment only where the task needs one.",
        "After 500 steps the reverse task is above 90 % token accuracy and the last layer's "
        "attention concentrates on the anti-diagonal.",
        ("attention", "loss"), 500),
)

LESSONS: dict[str, Lesson] = {lesson.name: lesson for lesson in _LIST}


def lesson_for_scenario(scenario: str) -> Lesson | None:
    """The first lesson that runs ``scenario``, if any."""
    return next((lesson for lesson in _LIST if scenario in lesson.runs), None)
