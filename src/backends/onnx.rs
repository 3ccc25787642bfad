//! `aws_sagemaker.invoke_endpoint` in-process: ONNX models run by tract, chosen per endpoint name
//! (`[endpoints.<name>] backend = "onnx"`), every other name falling through to SageMaker.
//!
//! A model takes one float tensor `[rows, features]`. Each CSV record of the request becomes one
//! row: a field is parsed as a number, PostgreSQL's booleans `t` / `f` (and `true` / `false`) as
//! 1 / 0, and an empty field (SQL NULL) as NaN, ONNX's missing value. The response has one CSV
//! record per row with the chosen output's values: the output named `probabilities` when the model
//! has one (scikit-learn classifiers exported with zipmap disabled), else the first output, or the
//! one the configuration names. A two-column `probabilities` output gives the probability of the
//! second (positive) class only; any other output gives all of a row's values, comma-separated.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use super::{BoxFuture, EndpointBackend};
use crate::enrich::csv;
use crate::error::InferenceError;

type Plan = Arc<TypedRunnableModel>;

/// One loaded model.
pub struct OnnxModel {
    plan: Plan,
    features: usize,
    output: usize,
    /// Write only the positive class of a binary `probabilities` output.
    positive_class_only: bool,
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel")
            .field("features", &self.features)
            .field("output", &self.output)
            .finish_non_exhaustive()
    }
}

impl OnnxModel {
    /// Loads and optimises a model whose first input is `[batch, features]`. `output` names the
    /// output to return (default: `probabilities` if present, else the first).
    pub fn load(path: &Path, output: Option<&str>) -> Result<OnnxModel, String> {
        let mut model = tract_onnx::onnx()
            .model_for_path(path)
            .map_err(|e| format!("cannot load ONNX model {}: {e:#}", path.display()))?;
        let input = model
            .input_fact(0)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .clone();
        let shape: Vec<Option<i64>> = input
            .shape
            .dims()
            .map(|d| d.concretize().and_then(|d| d.to_i64().ok()))
            .collect();
        let features = match shape.as_slice() {
            [_, Some(f)] if *f > 0 => *f as usize,
            _ => {
                return Err(format!(
                    "{}: the model's input must be a [batch, features] tensor with a fixed \
                     number of features, not {:?}",
                    path.display(),
                    input.shape
                ))
            }
        };
        let batch = model.sym("batch");
        model
            .set_input_fact(
                0,
                f32::fact(&[TDim::Sym(batch), TDim::Val(features as i64)]).into(),
            )
            .map_err(|e| format!("{}: {e:#}", path.display()))?;
        let names: Vec<String> = model
            .output_outlets()
            .map_err(|e| format!("{}: {e}", path.display()))?
            .iter()
            .map(|&o| {
                model
                    .outlet_label(o)
                    .map(str::to_owned)
                    .unwrap_or_else(|| model.node(o.node).name.clone())
            })
            .collect();
        let (output, positive_class_only) = match output {
            Some(name) => (
                names.iter().position(|n| n == name).ok_or_else(|| {
                    format!(
                        "{}: the model has no output named \"{name}\" (its outputs: {})",
                        path.display(),
                        names.join(", ")
                    )
                })?,
                false,
            ),
            None => match names.iter().position(|n| n == "probabilities") {
                Some(i) => (i, true),
                None => (0, false),
            },
        };
        let plan = model
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(|e| format!("{}: the model cannot run: {e:#}", path.display()))?;
        Ok(OnnxModel {
            plan,
            features,
            output,
            positive_class_only,
        })
    }

    pub fn features(&self) -> usize {
        self.features
    }

    /// Scores a CSV body of one record per row; the response body has one record per row.
    pub fn score_csv(&self, body: &str) -> Result<String, InferenceError> {
        let records = csv::split_records(body).map_err(invalid)?;
        let mut values = Vec::with_capacity(records.len() * self.features);
        for (row, record) in records.iter().enumerate() {
            let fields = csv::split_fields(record).map_err(invalid)?;
            if fields.len() != self.features {
                return Err(InferenceError::InvalidArgument(format!(
                    "the model takes {} inputs per row, record {} has {}",
                    self.features,
                    row + 1,
                    fields.len()
                )));
            }
            for (column, field) in fields.iter().enumerate() {
                values.push(parse_feature(field).ok_or_else(|| {
                    InferenceError::InvalidArgument(format!(
                        "input {} of record {} is not a number: \"{}\"",
                        column + 1,
                        row + 1,
                        field.chars().take(40).collect::<String>()
                    ))
                })?);
            }
        }
        let rows = records.len();
        let outputs = self
            .run(rows, values)
            .map_err(|e| InferenceError::Service {
                code: "ModelError".into(),
                message: format!("the model failed: {e:#}"),
                request_id: None,
            })?;
        self.write_outputs(rows, &outputs)
    }

    fn run(&self, rows: usize, values: Vec<f32>) -> TractResult<TVec<TValue>> {
        let input = Tensor::from_shape(&[rows, self.features], &values)?;
        self.plan.run(tvec!(input.into()))
    }

    fn write_outputs(&self, rows: usize, outputs: &[TValue]) -> Result<String, InferenceError> {
        let malformed = |message: String| InferenceError::Malformed {
            message,
            request_id: None,
        };
        let output = outputs
            .get(self.output)
            .ok_or_else(|| malformed("the model produced no output".into()))?;
        let shape = output.shape();
        let columns = match shape {
            [n] if *n == rows => 1,
            [n, k] if *n == rows => *k,
            _ => {
                return Err(malformed(format!(
                    "the model's output has shape {shape:?} for {rows} rows"
                )))
            }
        };
        let (first, wanted) = if self.positive_class_only && columns == 2 {
            (1, 1)
        } else {
            (0, columns)
        };
        let texts = format_values(output)
            .map_err(|e| malformed(format!("the model's output cannot be read: {e:#}")))?;
        let mut body = String::with_capacity(rows * 12);
        for row in 0..rows {
            for (i, text) in texts[row * columns + first..][..wanted].iter().enumerate() {
                if i > 0 {
                    body.push(',');
                }
                body.push_str(text);
            }
            body.push('\n');
        }
        Ok(body)
    }
}

/// Every value of a tensor as text: floats in their shortest round-trip form, integers as such.
fn format_values(tensor: &Tensor) -> TractResult<Vec<String>> {
    let mut out = Vec::with_capacity(tensor.len());
    match tensor.datum_type() {
        DatumType::F32 => {
            for v in tensor.to_plain_array_view::<f32>()?.iter() {
                out.push(v.to_string());
            }
        }
        DatumType::I64 => {
            for v in tensor.to_plain_array_view::<i64>()?.iter() {
                out.push(v.to_string());
            }
        }
        _ => {
            let cast = tensor.cast_to::<f64>()?;
            for v in cast.to_plain_array_view::<f64>()?.iter() {
                let mut s = String::new();
                let _ = write!(s, "{v}");
                out.push(s);
            }
        }
    }
    Ok(out)
}

fn parse_feature(field: &str) -> Option<f32> {
    let field = field.trim();
    match field {
        "" => Some(f32::NAN),
        "t" | "true" => Some(1.0),
        "f" | "false" => Some(0.0),
        _ => field.parse().ok(),
    }
}

fn invalid(why: &str) -> InferenceError {
    InferenceError::InvalidArgument(format!("the model input is not valid CSV: {why}"))
}

/// Endpoints served by local models; other names go to `fallback` (SageMaker).
pub struct LocalEndpoints {
    models: HashMap<String, Arc<OnnxModel>>,
    fallback: Arc<dyn EndpointBackend>,
}

impl LocalEndpoints {
    pub fn new(
        models: HashMap<String, Arc<OnnxModel>>,
        fallback: Arc<dyn EndpointBackend>,
    ) -> LocalEndpoints {
        LocalEndpoints { models, fallback }
    }
}

impl EndpointBackend for LocalEndpoints {
    fn invoke<'a>(
        &'a self,
        endpoint: &'a str,
        body: String,
    ) -> BoxFuture<'a, Result<(String, Option<String>), InferenceError>> {
        let Some(model) = self.models.get(endpoint).cloned() else {
            return self.fallback.invoke(endpoint, body);
        };
        Box::pin(async move {
            // Model evaluation is CPU work: off the I/O threads, and a panic is an error.
            let scored = tokio::task::spawn_blocking(move || model.score_csv(&body))
                .await
                .map_err(|e| InferenceError::Service {
                    code: "ModelError".into(),
                    message: format!("the local model failed: {e}"),
                    request_id: None,
                })??;
            Ok((scored, None))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(name: &str) -> OnnxModel {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("models/{name}.onnx"));
        OnnxModel::load(&path, None).expect("the committed model loads")
    }

    fn values(body: &str) -> Vec<Vec<f32>> {
        csv::split_records(body)
            .expect("valid in this test")
            .iter()
            .map(|r| {
                r.split(',')
                    .map(|v| v.parse().expect("valid in this test"))
                    .collect()
            })
            .collect()
    }

    // Expected values from onnxruntime 1.23 on the same models and inputs.
    #[test]
    fn the_fraud_classifier_returns_the_positive_class_probability_in_row_order() {
        let fraud = model("fraud");
        assert_eq!(fraud.features(), 5);
        let out = fraud
            .score_csv("20.9,14,3.5,f,t\n1450.00,2,800,t,f\n600,23,120.5,t,f\n")
            .expect("valid in this test");
        let got = values(&out);
        let expected = [0.006_906_152, 0.915_101_77, 0.961_766_5];
        assert_eq!(got.len(), 3, "{out}");
        for (row, e) in got.iter().zip(expected) {
            assert_eq!(row.len(), 1, "{out}");
            assert!((row[0] - e).abs() < 1e-5, "{out}");
        }
        // The label output, chosen by name, gives the class.
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fraud.onnx");
        let labels = OnnxModel::load(&path, Some("label")).expect("valid in this test");
        assert_eq!(
            labels
                .score_csv("20.9,14,3.5,f,t\n1450.00,2,800,t,f\n")
                .expect("valid in this test"),
            "0\n1\n"
        );
        assert!(OnnxModel::load(&path, Some("nope"))
            .expect_err("fails in this test")
            .contains("label, probabilities"));
    }

    #[test]
    fn the_recommendation_regressor_returns_its_prediction() {
        let out = model("recommend")
            .score_csv("34,85.00,t,3,49.99\n60,20.0,f,2,399.0\n")
            .expect("valid in this test");
        let got = values(&out);
        assert!((got[0][0] - 3.680_970_2).abs() < 1e-4, "{out}");
        assert!((got[1][0] + 1.539_743_2).abs() < 1e-4, "{out}");
    }

    #[test]
    fn bad_input_is_reported_not_guessed() {
        let fraud = model("fraud");
        let error = fraud.score_csv("1,2,3\n").expect_err("fails in this test");
        assert!(
            error
                .to_string()
                .contains("takes 5 inputs per row, record 1 has 3"),
            "{error}"
        );
        let error = fraud
            .score_csv("1,2,3,4,5\n1,2,x,4,5\n")
            .expect_err("fails in this test");
        assert!(
            error
                .to_string()
                .contains("input 3 of record 2 is not a number"),
            "{error}"
        );
        // NULL inputs are missing values, not errors.
        assert_eq!(
            values(&fraud.score_csv(",,,,\n").expect("valid in this test")).len(),
            1
        );
        let missing = std::env::temp_dir().join("pgenrich-no-such-model.onnx");
        assert!(OnnxModel::load(&missing, None)
            .expect_err("fails in this test")
            .contains("cannot load ONNX model"));
    }

    #[test]
    fn features_parse_numbers_booleans_and_nulls() {
        assert_eq!(parse_feature(" 12.5 "), Some(12.5));
        assert_eq!(parse_feature("-3"), Some(-3.0));
        assert_eq!(parse_feature("t"), Some(1.0));
        assert_eq!(parse_feature("false"), Some(0.0));
        assert!(parse_feature("").expect("valid in this test").is_nan());
        assert_eq!(parse_feature("abc"), None);
    }
}
