"""Where the protocol sums a step's gradients: one flat buffer per parameter
server and dtype for the dense gradients, one sum per variable for sparse
ones.

A push sends each of its tensors to a parameter server as its own transfer
(the server pulls it with one RPC), and each sum it adds to is one more op
under the protocol's lock. Packed per server, a model of a hundred variables
sends one tensor and adds once per server instead of a hundred times. The
mean is unpacked per variable once per step, at the apply. Sparse gradients
(`tf.IndexedSlices`, embeddings) keep a sum of their own, so only the rows
they touch travel.
"""
import tensorflow as tf


def _dense(g):
    return tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g


class FlatSum:
    """The dense gradients of several variables of one device and dtype,
    summed in one 1-D variable (`variable`), each at its own offset."""

    def __init__(self, indices, shapes, make_variable, dtype, name):
        self.indices = list(indices)
        self.shapes = [tf.TensorShape(s) for s in shapes]
        self.sizes = [s.num_elements() for s in self.shapes]
        self.variable = make_variable(tf.zeros([sum(self.sizes)], dtype),
                                      name)

    def payload(self, grads):
        """What a push sends for this sum (built on the worker): its
        gradients flattened and concatenated. A gradient that arrives sparse
        here (it was dense when the sums were laid out) is made dense."""
        parts = [tf.reshape(_dense(grads[i]), [-1]) for i in self.indices]
        return parts[0] if len(parts) == 1 else tf.concat(parts, 0)

    def add(self, payload):
        return self.variable.assign_add(payload, read_value=False)

    def means(self, count):
        """[(variable index, mean gradient)] of `count` summed pushes."""
        flat = self.variable.read_value() / tf.cast(count,
                                                     self.variable.dtype)
        parts = tf.split(flat, self.sizes) if len(self.sizes) > 1 else [flat]
        return [(i, tf.reshape(p, s))
                for i, p, s in zip(self.indices, parts, self.shapes)]


class OneSum:
    """The gradient of one variable, summed in a variable of its shape: a
    sparse gradient is added to the rows it touches."""

    def __init__(self, index, shape, make_variable, dtype, name):
        self.indices = [index]
        self.variable = make_variable(tf.zeros(shape, dtype), name)

    def payload(self, grads):
        return grads[self.indices[0]]

    def add(self, payload):
        if isinstance(payload, tf.IndexedSlices):
            return self.variable.scatter_add(payload)
        return self.variable.assign_add(payload, read_value=False)

    def means(self, count):
        return [(self.indices[0], self.variable.read_value()
                 / tf.cast(count, self.variable.dtype))]


def _name(v):
    return v.name.split(":")[0].replace("/", "_")


def clear(s):
    return s.variable.assign(tf.zeros_like(s.variable))


def layout(var_list, sparse, make_variable, colocate):
    """The sums of `var_list` (in order of their first variable): sparse ones
    (`sparse[i]` true) one per variable, dense ones one per device and dtype.
    `make_variable(initial_value, name)` creates a sum variable;
    `colocate(var)` is the scope that places it beside `var`."""
    groups = {}
    singles = []
    for i, v in enumerate(var_list):
        if sparse[i]:
            singles.append(i)
        else:
            groups.setdefault((v.device, v.dtype.base_dtype), []).append(i)
    sums = []
    for i in singles:
        v = var_list[i]
        with colocate(v):
            sums.append(OneSum(i, v.shape, make_variable, v.dtype.base_dtype,
                               "acc_" + _name(v)))
    for (_, dtype), indices in groups.items():
        first = var_list[indices[0]]
        with colocate(first):
            sums.append(FlatSum(
                indices, [var_list[i].shape for i in indices], make_variable,
                dtype, "acc_%d_from_%s" % (len(indices), _name(first))))
    return sorted(sums, key=lambda s: s.indices[0])


def means_in_order(sums, count, num_variables):
    """The mean gradients of every variable, in var_list order."""
    means = [None] * num_variables
    for s in sums:
        for i, mean in s.means(count):
            means[i] = mean
    return means
