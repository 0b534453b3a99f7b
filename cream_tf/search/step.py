"""One search step: `SearchState` (everything a search trains and checkpoints) and
`StepFunctions` (the traced replica steps that train it).

A step trains one path, sampled on the host, on the global batch split over the replicas; after
the warm-up it scores the student against the board, picks a teacher and uses the Cream loss
(docs/method.md, "Supernet training"). Every `meta_interval` steps the matching network takes a
meta-gradient step. The loop that calls these is `loop.search`.
"""
from __future__ import annotations

import contextlib

import keras
import tensorflow as tf

from cream_tf import matching as matching_lib
from cream_tf.board import Board
from cream_tf.search.config import SearchConfig
from cream_tf.search.optimizer import (LinearDecay, PathSGD, StepRate, poison_gradients,
                                       step_is_finite)
from cream_tf.space import Space
from cream_tf.supernet import SuperNet, VariableOwner, switch

__all__ = ["SearchState", "StepFunctions"]


_FIXED = VariableOwner(-1, -1)  # always trained: the matching network's variables


def _recording(tape, on: bool):
    """A context that records on `tape` if `on`, and pauses it otherwise."""
    return contextlib.nullcontext() if on else tape.stop_recording()


def _assign(forward, state):
    forward.assign(state)
    return tf.constant(True)


class SearchState:
    """Everything a search trains and checkpoints, created under the strategy's scope.

    Public for the step benchmarks (benchmarks/harness.py), which time `search`'s own steps.
    """

    def __init__(self, space: Space, config: SearchConfig, strategy):
        self.space, self.config, self.strategy = space, config, strategy
        keras.utils.set_random_seed(config.seed)  # supernet and matching-network initialisation
        r = space.resolution
        with strategy.scope():
            # The supernet's layers take the dtype policy at construction; everything else
            # (board, matching network, losses) stays float32.
            previous = keras.mixed_precision.global_policy()
            if config.mixed_precision:
                keras.mixed_precision.set_global_policy(config.mixed_precision)
            try:
                self.supernet = SuperNet(space, dropout=config.dropout)
            finally:
                keras.mixed_precision.set_global_policy(previous)
            # the step counter comes first: every learning rate is read at it (`StepRate`)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
            schedule = LinearDecay(config.learning_rate, config.total_steps)
            self.path_optimizer = PathSGD(self.supernet.variable_owner, space.num_layers,
                                          learning_rate=StepRate(schedule, self.step),
                                          momentum=config.momentum, nesterov=config.nesterov,
                                          l2=config.weight_decay,
                                          freeze_inactive=config.freeze_inactive)
            self.optimizer = self.path_optimizer
            if config.mixed_precision == "mixed_float16":
                # dynamic loss scale; a non-finite step is skipped and the scale halved
                self.optimizer = keras.optimizers.LossScaleOptimizer(self.path_optimizer)
            self.schedule = schedule
            self.optimizer.build(self.supernet.trainable_variables)
            self.board = Board(config.board_size, space.num_layers, config.board_images,
                               (r, r, 3), space.num_classes, gap=config.board_gap)
            self.matching = matching_lib.MatchingNetwork(config.board_images, space.num_classes,
                                                         seed=config.seed, dtype="float32")
            # M is a parameter group of the release's student optimizer: the same Nesterov
            # momentum, its own rate with the same linear decay, no weight decay. A PathSGD whose
            # variables are all "fixed" is exactly that, and skips a poisoned step bit-identically.
            self.meta_schedule = LinearDecay(config.meta_lr, config.total_steps)
            self.meta_optimizer = PathSGD(lambda v: _FIXED, space.num_layers,
                                          learning_rate=StepRate(self.meta_schedule, self.step),
                                          momentum=config.momentum, nesterov=config.nesterov,
                                          l2=0.0, name="meta_sgd")
            self.meta_optimizer.build(self.matching.trainable_variables)


class StepFunctions:
    """The traced replica steps. One trace each serves every path (the path is an int32 tensor).

    `step` (warm-up and distillation) and `meta_step` are the functions `warmup`, `distill` and
    `meta` run; public, like `SearchState`, for the step benchmarks.
    """

    def __init__(self, state: SearchState):
        self.space, self.config, self.strategy = state.space, state.config, state.strategy
        self.supernet, self.optimizer, self.board = state.supernet, state.optimizer, state.board
        self.path_optimizer = state.path_optimizer
        self.matching, self.meta_optimizer = state.matching, state.meta_optimizer
        config, strategy = self.config, self.strategy
        self.replicas = strategy.num_replicas_in_sync
        self.per_replica = config.batch_size // self.replicas
        jit = bool(config.jit_compile)
        # the supernet's forward, traced once and shared by every call and replica of the steps
        self.forward = self.supernet.path_forward(training=True)
        self.forward.concrete  # traced here, eagerly: once for every replica and call
        # One traced step serves warm-up and distillation (a bool tensor picks, via tf.cond): the
        # graph holds every branch of every layer, so each trace costs a lot of start-up time.
        self.step = tf.function(self._train, jit_compile=jit)
        # The meta update: eager for short searches (eager tf.switch_case runs only the taken
        # branch, no trace), traced for long ones (SearchConfig.meta_traced).
        self.meta_step = (tf.function(self._meta_replicas, jit_compile=jit)
                          if config.meta_traced else self._meta_replicas)

    @staticmethod
    def _local(tensor, size):
        """This replica's slice of a global batch (replicas take consecutive blocks)."""
        ctx = tf.distribute.get_replica_context()
        rid = tf.cast(ctx.replica_id_in_sync_group, tf.int32)
        return tensor[rid * size:(rid + 1) * size]

    def warmup(self, images, labels, path):
        return self.step(images, labels, path, tf.constant(False))

    def distill(self, images, labels, path):
        return self.step(images, labels, path, tf.constant(True))

    def _train(self, images, labels, path, distill):
        cfg, net, board = self.config, self.supernet, self.board
        n = cfg.board_images
        global_batch = cfg.batch_size
        num_classes = self.space.num_classes

        forward = self.forward
        meta = cfg.teacher == "meta"
        matching = self.matching

        def replica_fn(images, labels):
            # One read of the variables serves every forward of the step; the BatchNorm
            # statistics flow from forward to forward (board scoring, teacher, student, as the
            # release runs them) and are written once, at the end, if the step was finite.
            weights, state = forward.values()
            x = self._local(images, self.per_replica)
            y = tf.cast(self._local(labels, self.per_replica), tf.int32)

            def score():
                new_state = []

                def student(t):
                    logits, after = forward(weights, state, t, path)
                    # the statistics are not differentiated: a Case op's gradient otherwise runs
                    # its branch's backward for every output, even those with no gradient
                    # coming in
                    new_state.append([tf.stop_gradient(a) for a in after])
                    return logits

                probs = matching_lib.student_board_probs(student, board.images, board.size)
                return tf.cast(probs, tf.float32), new_state[0]

            def no_score():
                return tf.zeros(board.probs.shape, tf.float32), state

            def choose(student_probs):
                index, rho, _ = matching_lib.select_teacher(
                    cfg.teacher, student_probs, board.probs, board.size, matching)
                return tf.cast(index, tf.int32), tf.cast(rho, tf.float32)

            def no_choice():  # rho = 0 makes the loss exactly the warm-up CE
                return tf.constant(-1, tf.int32), tf.constant(0.0)

            def teach(index, scored):
                teacher_path = tf.gather(tf.convert_to_tensor(board.paths), index)
                logits, after = forward(weights, scored, x, teacher_path)
                return tf.cast(logits, tf.float32), after

            def no_teacher(scored):
                return tf.zeros([tf.shape(x)[0], num_classes], tf.float32), scored

            loss_scale = (self.optimizer.dynamic_scale  # read before apply may change it
                          if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)
                          else tf.constant(1.0))
            loss_scale = tf.identity(loss_scale)
            with tf.GradientTape() as tape:
                tape.watch(weights)
                if meta:
                    # With scoring_gradient (the release's rho is not detached) the student
                    # scores the board on the tape: the loss trains M, and the student through
                    # its scoring, by rho. Without it, only M learns through rho.
                    with _recording(tape, cfg.scoring_gradient):
                        student_probs, scored = switch(tf.cast(distill, tf.int32),
                                                       [no_score, score])
                    # identical on every replica already; the mean makes it bit-identical, so
                    # all replicas pick the same teacher (outside the switch: a collective must
                    # not be skipped)
                    student_probs = matching_lib.replica_mean(student_probs)
                else:  # top1 needs no scoring (nor does the release run one)
                    student_probs, scored = None, state
                index, rho = switch(tf.cast(distill, tf.int32),
                                    [no_choice, lambda: choose(student_probs)])
                # The teacher runs off the tape: nothing of its forward is kept for a backward.
                with tape.stop_recording():
                    teacher_logits, taught = switch(
                        tf.cast(distill, tf.int32),
                        [lambda: no_teacher(scored), lambda: teach(index, scored)])
                logits, new_state = forward(weights, taught, x, path)
                loss = matching_lib.cream_loss(y, logits, teacher_logits, rho,
                                               cfg.label_smoothing, global_batch)
                # identity unless a LossScaleOptimizer (mixed_float16) scales it; apply unscales
                scaled = self.optimizer.scale_loss(loss)
            m_vars = matching.trainable_variables if meta else []
            grads = tape.gradient(scaled, list(weights) + list(m_vars))
            grads, m_grads = grads[:len(weights)], grads[len(weights):]
            if meta:
                m_grads = [tf.zeros_like(v) if g is None else g / tf.cast(loss_scale, g.dtype)
                           for v, g in zip(m_vars, m_grads)]
            finite = step_is_finite(loss, grads + m_grads)
            self.optimizer.apply(poison_gradients(grads, finite), net.trainable_variables)
            if meta:  # M moves only in distillation steps (before, rho is a constant 0)
                self.meta_optimizer.apply(poison_gradients(m_grads, finite & distill), m_vars)
            # a bad step leaves the BatchNorm statistics as they were, like everything else
            tf.cond(finite, lambda: _assign(forward, new_state), lambda: tf.constant(False))
            correct = tf.reduce_sum(tf.cast(
                tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), y), tf.int32))
            probs = tf.nn.softmax(tf.cast(logits[:n], tf.float32))
            return loss, correct, x[:n], probs, rho, index, tf.cast(finite, tf.int32)

        self.path_optimizer.set_path(path)
        loss, correct, head, probs, rho, index, finite = self.strategy.run(
            replica_fn, args=(images, labels))
        reduce = self.strategy.reduce
        return {"finite": self.strategy.experimental_local_results(finite)[0],
                "loss": reduce("SUM", loss, axis=None),
                "correct": reduce("SUM", correct, axis=None),
                "images": self.strategy.gather(head, axis=0)[:n],
                "probs": self.strategy.gather(probs, axis=0)[:n],
                "rho": reduce("MEAN", rho, axis=None),
                "teacher": self.strategy.experimental_local_results(index)[0]}

    def meta(self, images, labels, val_images, val_labels, path) -> bool:
        """One meta update (the matching network and a real student step); True if applied.

        `val_images`, `val_labels` are the outer slice's source when `meta_outer='held_out'`;
        with the release's 'batch' they are not read.
        """
        return bool(self.meta_step(images, labels, val_images, val_labels, path).numpy())

    def _meta_replicas(self, images, labels, val_images, val_labels, path):
        """The replica work of `meta`; returns 1 (int32) if the update was applied."""
        cfg, board, forward = self.config, self.board, self.forward
        m, replicas = cfg.meta_slice, self.replicas
        net, matching = self.supernet, self.matching
        self.path_optimizer.set_path(path)

        def replica_fn(images, labels, val_images, val_labels):
            local = self._local(images, self.per_replica)
            local_y = tf.cast(self._local(labels, self.per_replica), tf.int32)
            x, y = local[:m], local_y[:m]
            if cfg.meta_outer == "batch":  # the release: the batch's next slice
                vx, vy = local[m:2 * m], local_y[m:2 * m]
            else:
                vx = self._local(val_images, m)
                vy = tf.cast(self._local(val_labels, m), tf.int32)
            weights, state = forward.values()
            applied = []

            def clipped_apply(optimizer, grads, variables, also=True):
                """Applies the global gradient `grads` (the same on every replica) clipped to
                CLIP_NORM, as the release's meta step does; skipped unless it is finite and
                `also`. Each replica passes its share: the optimizer's all-reduce sums them."""
                grads, _ = tf.clip_by_global_norm(grads, matching_lib.CLIP_NORM)
                finite = step_is_finite(tf.constant(0.0), grads) & also
                optimizer.apply(poison_gradients([g / replicas for g in grads], finite),
                                variables)
                return finite

            def student_step(g):
                # the release's real step on the inner gradient (already summed over the
                # replicas), with the student's own optimizer
                applied.append(clipped_apply(self.path_optimizer, g, net.trainable_variables))
                return forward.values()[0]

            update = matching_lib.meta_update(
                net, path, matching, board.images, board.probs, board.size,
                x, y, vx, vy, self.meta_optimizer.learning_rate, cfg.label_smoothing,
                m * replicas, board_paths=board.paths, forward=forward, weights=weights,
                state=state, student_step=student_step, scoring_gradient=cfg.scoring_gradient)
            grads = update.grads
            if replicas > 1:  # clip the global gradient, as one device would
                grads = tf.distribute.get_replica_context().all_reduce(
                    tf.distribute.ReduceOp.SUM, grads)
            finite = clipped_apply(self.meta_optimizer, grads, matching.trainable_variables,
                                   also=applied[0])
            tf.cond(finite, lambda: _assign(forward, update.state), lambda: tf.constant(False))
            return tf.cast(finite, tf.int32)

        finite = self.strategy.run(replica_fn, args=(images, labels, val_images, val_labels))
        return self.strategy.experimental_local_results(finite)[0]
