//! A summary in torchinfo's form: `Layer (type:depth-idx)`, `Input Shape`, `Output Shape`, `Param #`,
//! then totals, forward multiply-adds and estimated memory.
//!
//! Rows are module scopes and layer nodes (functional ops are not modules, as in torchinfo) in order of
//! first execution. Below `max_depth` rows are folded: a folded container shows its subtree's parameter
//! count, an expanded one shows `--`.

use std::fmt::Write;

use super::{Graph, ScopeId};

enum Item {
    Scope(ScopeId),
    Node(usize),
}

fn commas(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn shape_str(s: &[usize]) -> String {
    format!("{s:?}")
}

impl Graph {
    /// Index of the first node inside scope `s` (or its sub-scopes).
    fn first_node(&self, s: ScopeId) -> usize {
        self.nodes
            .iter()
            .position(|n| self.scope_contains(s, n.scope))
            .unwrap_or(usize::MAX)
    }

    /// Whether scope `inner` is `outer` or nested in it.
    pub fn scope_contains(&self, outer: ScopeId, mut inner: ScopeId) -> bool {
        loop {
            if inner == outer {
                return true;
            }
            match self.scopes[inner].parent {
                Some(p) => inner = p,
                None => return false,
            }
        }
    }

    /// Trainable parameter count of everything inside scope `s`.
    pub fn scope_params(&self, s: ScopeId) -> usize {
        self.nodes
            .iter()
            .filter(|n| self.scope_contains(s, n.scope))
            .map(|n| self.node_params(n))
            .sum()
    }

    fn node_params(&self, n: &super::Node) -> usize {
        n.params
            .iter()
            .map(|&p| &self.params[p])
            .filter(|p| p.trainable)
            .map(|p| p.shape.iter().product::<usize>())
            .sum()
    }

    fn items(&self, s: ScopeId) -> Vec<(usize, Item)> {
        let mut items: Vec<(usize, Item)> = self
            .children(s)
            .map(|c| (self.first_node(c), Item::Scope(c)))
            .collect();
        for (i, n) in self.nodes.iter().enumerate() {
            if n.scope == s && n.module_type.is_some() {
                items.push((i, Item::Node(i)));
            }
        }
        items.sort_by_key(|(i, _)| *i);
        items
    }

    /// The torchinfo-style table; `max_depth` as torchinfo's `depth` (3 by default there).
    pub fn summary(&self, max_depth: usize) -> String {
        const W: usize = 120;
        let mut out = String::new();
        let row = |out: &mut String, name: &str, input: &str, output: &str, params: &str| {
            // A name longer than its column (two fusion marks) still gets a space before the input.
            let sep = if name.chars().count() >= 46 { " " } else { "" };
            let _ = writeln!(out, "{name:<46}{sep}{input:<26}{output:<26}{params}");
        };
        row(
            &mut out,
            "Layer (type:depth-idx)",
            "Input Shape",
            "Output Shape",
            "Param #",
        );
        let _ = writeln!(out, "{}", "=".repeat(W));
        let root = &self.scopes[0];
        let vshape = |v: Option<usize>| {
            v.map(|v| shape_str(&self.values[v].shape))
                .unwrap_or_else(|| "--".into())
        };
        row(
            &mut out,
            &root.type_name,
            &vshape(root.input),
            &vshape(root.output),
            "--",
        );
        let mut counters = vec![0usize; max_depth + 1];
        let plan = self.shown_fusion_plan(false);
        let train_plan = self.shown_fusion_plan(true);
        let plans = [&plan, &train_plan];
        self.summary_rows(0, 1, max_depth, &mut counters, &mut out, &row, plans);
        let _ = writeln!(out, "{}", "=".repeat(W));
        for (p, mode, mark) in [
            (&plan, "inference", "fused k"),
            (&train_plan, "training", "fused train k"),
        ] {
            if p.chains.is_empty() {
                let _ = writeln!(out, "Fused in {mode}: nothing");
                continue;
            }
            let mut kinds: Vec<(String, usize)> = vec![];
            for c in &p.chains {
                match kinds.iter_mut().find(|(k, _)| *k == c.label()) {
                    Some((_, n)) => *n += 1,
                    None => kinds.push((c.label(), 1)),
                }
            }
            let list: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} × {k}")).collect();
            // (concat is a functional op: no row of its own)
            let written: Vec<&str> = p
                .written_concats
                .iter()
                .map(|w| self.nodes[w.concat].name.as_str())
                .collect();
            let written = match written.len() {
                0 => String::new(),
                n => format!(
                    "; {n} concats written by their producers (no copy): {}",
                    written.join(", ")
                ),
            };
            let _ = writeln!(
                out,
                "Fused in {mode} (rows marked [{mark}], k = chain): {} chains: {}{written}",
                p.chains.len(),
                list.join(", ")
            );
        }
        let _ = writeln!(out, "{}", "=".repeat(W));
        let trainable = self.num_params();
        let _ = writeln!(out, "Total params: {}", commas(trainable));
        let _ = writeln!(out, "Trainable params: {}", commas(trainable));
        let _ = writeln!(out, "Non-trainable params: 0");
        let macs = self.macs();
        let _ = writeln!(
            out,
            "Forward mult-adds (G): {:.2}  ({:.2} GFLOPs)",
            macs as f64 / 1e9,
            2.0 * macs as f64 / 1e9
        );
        let _ = writeln!(out, "{}", "=".repeat(W));
        let mb = |b: u64| b as f64 / 1e6;
        let input_bytes: u64 = self
            .inputs
            .iter()
            .map(|&v| self.values[v].shape.iter().product::<usize>() as u64 * 4)
            .sum();
        let (train, infer) = self.activation_bytes();
        let param_bytes = self
            .params
            .iter()
            .map(|p| p.shape.iter().product::<usize>() as u64 * 4)
            .sum::<u64>();
        let _ = writeln!(out, "Input size (MB): {:.2}", mb(input_bytes));
        let _ = writeln!(out, "Activations, training (MB): {:.2}", mb(train));
        let _ = writeln!(out, "Activations, inference peak (MB): {:.2}", mb(infer));
        let _ = writeln!(out, "Params and buffers size (MB): {:.2}", mb(param_bytes));
        let _ = writeln!(out, "{}", "=".repeat(W));
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn summary_rows(
        &self,
        s: ScopeId,
        depth: usize,
        max_depth: usize,
        counters: &mut Vec<usize>,
        out: &mut String,
        row: &dyn Fn(&mut String, &str, &str, &str, &str),
        plans: [&super::FusionPlan; 2],
    ) {
        if depth > max_depth {
            return;
        }
        let prefix = if depth == 1 {
            "├─".to_string()
        } else {
            format!("{}└─", "│    ".repeat(depth - 1))
        };
        for (_, item) in self.items(s) {
            counters[depth] += 1;
            let idx = format!("{depth}-{}", counters[depth]);
            match item {
                Item::Node(i) => {
                    let n = &self.nodes[i];
                    let p = self.node_params(n);
                    // " [fused k]" (inference) then " [fused train k]": both start " [fused ".
                    let fused = plans[0].chain_of[i]
                        .map(|c| format!(" [fused {}]", c + 1))
                        .into_iter()
                        .chain(plans[1].chain_of[i].map(|c| format!(" [fused train {}]", c + 1)))
                        .collect::<String>();
                    row(
                        out,
                        &format!(
                            "{prefix}{}: {idx}{fused}",
                            n.module_type.as_deref().unwrap_or("")
                        ),
                        &shape_str(&self.values[n.inputs[0]].shape),
                        &shape_str(&self.values[n.output].shape),
                        &if p == 0 { "--".into() } else { commas(p) },
                    );
                }
                Item::Scope(c) => {
                    let sc = &self.scopes[c];
                    let folded = depth == max_depth;
                    let p = self.scope_params(c);
                    let shape = |v: Option<usize>| {
                        v.map(|v| shape_str(&self.values[v].shape))
                            .unwrap_or_else(|| "--".into())
                    };
                    row(
                        out,
                        &format!("{prefix}{}: {idx}", sc.type_name),
                        &shape(sc.input),
                        &shape(sc.output),
                        &if folded && p > 0 {
                            commas(p)
                        } else {
                            "--".into()
                        },
                    );
                    self.summary_rows(c, depth + 1, max_depth, counters, out, row, plans);
                }
            }
        }
    }
}
