//! Graphviz DOT export: one box per node (name, op, output shape), module scopes as nested clusters.
//! `vidgrad graph --model NAME --input-shape ... > net.dot && dot -Tsvg net.dot > net.svg`

use std::fmt::Write;

use super::{Graph, ScopeId};

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

impl Graph {
    /// The graph in DOT.
    pub fn to_dot(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "digraph \"{}\" {{", esc(&self.name));
        let _ = writeln!(
            out,
            "  rankdir=TB;\n  node [shape=box, fontname=\"Helvetica\", fontsize=10];"
        );
        for (i, &v) in self.inputs.iter().enumerate() {
            let _ = writeln!(
                out,
                "  v{v} [label=\"input {i}\\n{:?}\", shape=ellipse];",
                self.values[v].shape
            );
        }
        let plans = [self.shown_fusion_plan(false), self.shown_fusion_plan(true)];
        self.dot_scope(0, 1, &mut out, &plans);
        for (i, n) in self.nodes.iter().enumerate() {
            for &v in &n.inputs {
                let from = match self.values[v].producer {
                    Some(p) => format!("n{p}"),
                    None => format!("v{v}"),
                };
                let _ = writeln!(out, "  {from} -> n{i};");
            }
        }
        for (k, &o) in self.outputs.iter().enumerate() {
            let _ = writeln!(
                out,
                "  out{k} [label=\"output {k}\\n{:?}\", shape=ellipse];",
                self.values[o].shape
            );
            if let Some(p) = self.values[o].producer {
                let _ = writeln!(out, "  n{p} -> out{k};");
            }
        }
        out.push_str("}\n");
        out
    }

    fn dot_scope(
        &self,
        s: ScopeId,
        indent: usize,
        out: &mut String,
        plans: &[super::FusionPlan; 2],
    ) {
        let pad = "  ".repeat(indent);
        for (i, n) in self.nodes.iter().enumerate().filter(|(_, n)| n.scope == s) {
            let kind = n
                .module_type
                .clone()
                .unwrap_or_else(|| n.op.name().to_string());
            // Nodes of a fused chain (inference, then training): filled, with the chain's number and
            // kind.
            let [infer, train] = plans;
            let fused: Vec<String> = infer.chain_of[i]
                .map(|c| format!("\\nfused {}: {}", c + 1, esc(&infer.chains[c].label())))
                .into_iter()
                .chain(train.chain_of[i].map(|c| {
                    format!(
                        "\\nfused train {}: {}",
                        c + 1,
                        esc(&train.chains[c].label())
                    )
                }))
                .chain(
                    infer
                        .written(i)
                        .then(|| "\\nwritten by its producers".to_string()),
                )
                .chain(
                    train
                        .written(i)
                        .then(|| "\\nwritten by its producers (train)".to_string()),
                )
                .collect();
            let _ = writeln!(
                out,
                "{pad}n{i} [label=\"{}\\n{}\\n{:?}{}\"{}{}];",
                esc(&n.name),
                esc(&kind),
                self.values[n.output].shape,
                fused.concat(),
                if n.module_type.is_none() {
                    ", style=rounded"
                } else {
                    ""
                },
                if !fused.is_empty() {
                    ", style=filled, fillcolor=\"#ffe9b3\""
                } else {
                    ""
                }
            );
        }
        for c in self.children(s) {
            let sc = &self.scopes[c];
            let _ = writeln!(out, "{pad}subgraph cluster_{c} {{");
            let _ = writeln!(
                out,
                "{pad}  label=\"{} ({})\"; style=dashed;",
                esc(&sc.path),
                esc(&sc.type_name)
            );
            self.dot_scope(c, indent + 1, out, plans);
            let _ = writeln!(out, "{pad}}}");
        }
    }
}
