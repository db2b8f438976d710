//! Where the model's tensors sit in its one flat f32 vector (parameters, gradients and AdamW
//! moments all share it): the authors' state-dict names and shapes, in order, for text width d
//! and output width k. The CPU engine, the CUDA engine, the model files and the checkpoints all
//! read this one layout.

/// The two towers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tower {
    Text,
    Image,
}

impl Tower {
    /// The dropout site of head `head` (0..3): text heads 0–2, then image heads 0–2, the order
    /// of `ops::Dropouts` and of the CUDA kernels' per-model streams.
    pub fn site(self, head: usize) -> usize {
        match self {
            Tower::Text => head,
            Tower::Image => 3 + head,
        }
    }
}

/// Where one head's tensors sit in the flat parameter vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// Input width of the head (d for the projection head, else k).
    pub din: usize,
    /// (weight k×d, bias k) of the projection Linear; only the text tower's first head.
    pub proj: Option<(usize, usize)>,
    pub fc_w: usize,
    pub fc_b: usize,
    pub ln_w: usize,
    pub ln_b: usize,
}

/// One named tensor of the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
}

impl Tensor {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The flat parameter layout for text width d and output width k.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub d: usize,
    pub k: usize,
    pub text: [Head; 3],
    pub image: [Head; 3],
    pub logit_scale: usize,
    pub tensors: Vec<Tensor>,
    pub len: usize,
}

impl Layout {
    pub fn new(d: usize, k: usize) -> Layout {
        let mut tensors = Vec::new();
        let mut at = 0usize;
        let mut push = |name: String, shape: Vec<usize>| {
            let offset = at;
            at += shape.iter().product::<usize>();
            tensors.push(Tensor {
                name,
                shape,
                offset,
            });
            offset
        };
        let head = |tower: &str,
                    i: usize,
                    proj: bool,
                    push: &mut dyn FnMut(String, Vec<usize>) -> usize| {
            let p = format!("{tower}.model.{i}");
            let proj = proj.then(|| {
                (
                    push(format!("{p}.projection.weight"), vec![k, d]),
                    push(format!("{p}.projection.bias"), vec![k]),
                )
            });
            Head {
                din: if proj.is_some() { d } else { k },
                proj,
                fc_w: push(format!("{p}.fc.weight"), vec![k, k]),
                fc_b: push(format!("{p}.fc.bias"), vec![k]),
                ln_w: push(format!("{p}.layer_norm.weight"), vec![k]),
                ln_b: push(format!("{p}.layer_norm.bias"), vec![k]),
            }
        };
        let text = [
            head("text_model", 0, true, &mut push),
            head("text_model", 1, false, &mut push),
            head("text_model", 2, false, &mut push),
        ];
        let image = [
            head("image_model", 0, false, &mut push),
            head("image_model", 1, false, &mut push),
            head("image_model", 2, false, &mut push),
        ];
        let logit_scale = push("logit_scale".into(), vec![]);
        Layout {
            d,
            k,
            text,
            image,
            logit_scale,
            tensors,
            len: at,
        }
    }

    /// Where the image tower's tensors start in the flat vector: the text tower's come first.
    pub fn image_base(&self) -> usize {
        self.image[0].fc_w
    }

    pub fn tower(&self, tower: Tower) -> &[Head; 3] {
        match tower {
            Tower::Text => &self.text,
            Tower::Image => &self.image,
        }
    }
}
