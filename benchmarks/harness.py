"""The search step as the step benchmarks time it: trainer's own state and step functions, a
board filled as after the warm-up, fixed input tensors, one sampled path per call."""
import numpy as np
import tensorflow as tf

from cream_tf import trainer


class StepBench:
    """`plain(i)` and `cream(i)` run one step on path i (sampled with the search's prior);
    `cream` includes the host work `trainer.search` does after a distillation step."""

    def __init__(self, space, config, strategy, seed=0):
        self.space, self.config = space, config
        self.state = trainer.SearchState(space, config, strategy)
        self.steps = trainer.StepFunctions(self.state)
        self.sampler = trainer.Sampler(space, config.prior, config.skip_prob, config.macs_range,
                                       config.seed)
        b, r = config.batch_size, space.resolution
        rng = np.random.default_rng(seed)
        self.images = tf.constant(rng.normal(size=(b, r, r, 3)).astype(np.float32))
        self.labels = tf.constant(rng.integers(0, space.num_classes, size=b).astype(np.int32))
        self._paths = {}
        k, n = config.board_size, config.board_images
        for j in range(k):  # K entries with distinct paths and scores, as after a warm-up
            path = self.sampler.sample(10 ** 6 + j)
            probs = rng.dirichlet(np.ones(space.num_classes), size=n).astype(np.float32)
            self.state.board.update(path, 90.0 - 10.0 * j / k, self.sampler.path_macs(path),
                                    rng.normal(size=(n, r, r, 3)).astype(np.float32), probs)

    def path(self, i):
        if i not in self._paths:
            self._paths[i] = self.sampler.sample(i)
        return self._paths[i]

    def plain(self, i):
        out = self.steps.warmup(self.images, self.labels, tf.constant(self.path(i), tf.int32))
        float(out["loss"].numpy())

    def cream(self, i):
        path = self.path(i)
        out = self.steps.distill(self.images, self.labels, tf.constant(path, tf.int32))
        accuracy = 100.0 * float(out["correct"].numpy()) / self.config.batch_size
        self.state.board.update(path, accuracy, self.sampler.path_macs(path),
                                out["images"].numpy(), out["probs"].numpy())
        float(out["loss"].numpy()), float(out["rho"].numpy()), int(out["teacher"].numpy())

    def meta(self, i):
        m = self.config.meta_slice
        self.steps.meta(self.images, self.labels, self.images[:m], self.labels[:m],
                        tf.constant(self.path(i), tf.int32))
        float(self.state.matching.trainable_variables[0].numpy().sum())

    def traces(self) -> dict:
        """Traces of each traced function so far (1 each: no retracing per path)."""
        counts = {"step": self.steps.step.experimental_get_tracing_count()}
        if hasattr(self.steps, "forward"):  # the shared forward (absent before it existed)
            counts["forward"] = self.steps.forward.tracing_count
        if self.config.meta_traced:
            counts["meta"] = self.steps.meta_step.experimental_get_tracing_count()
        return counts

    def concrete_step(self):
        """The traced step (its first trace; no new trace)."""
        return self.steps.step.get_concrete_function(
            self.images, self.labels, tf.constant(self.path(0), tf.int32), tf.constant(True))
