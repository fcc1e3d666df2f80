//! Splitting fleet-wide numbers between agents by declared capacity.

use stampede_common::plan::data::DataOrder;
use stampede_common::plan::Plan;
use stampede_proto::v1::DataFile;

/// Splits `total` into integer parts proportional to `capacities`, by the
/// largest remainder, so the parts always add up to `total` exactly; an
/// agent of capacity 0 (fault-only) gets nothing, whatever the rounding.
pub fn split_by_capacity(total: u32, capacities: &[u32]) -> Vec<u32> {
    // Each part is at most `total`, so it fits back into a u32.
    split_u64(u64::from(total), capacities).into_iter().map(|p| p as u32).collect()
}

/// Each agent's iterations per phase (`[phase][agent]`), from its share of
/// the phase's connections (`concurrency[phase][agent]`): `per_worker` times
/// that share, or `count` split in proportion to it by the largest
/// remainder — exact in total, and 0 for an agent without connections (it
/// could not send them). 0 for phases of other models.
pub fn iterations(plan: &Plan, concurrency: &[Vec<u32>]) -> Vec<Vec<u64>> {
    plan.phases
        .iter()
        .zip(concurrency)
        .map(|(p, shares)| match (p.load.iterations(), p.load.per_worker) {
            (None, _) => vec![0; shares.len()],
            (Some(_), Some(per)) => shares.iter().map(|&c| u64::from(per) * u64::from(c)).collect(),
            (Some(count), None) => split_u64(count, shares),
        })
        .collect()
}

/// Each agent's data files (`[agent]`, one entry per step with `data:`):
/// every row of a `sequential` or `random` file for an agent that sends
/// load, and for `unique` its own contiguous range, the file cut in
/// proportion to `capacities` — so no row is used twice in the fleet. An
/// agent of capacity 0 (fault-only) gets the columns only. Every step's
/// set was read when the plan loaded (`data::resolve_data`).
pub fn data_files(plan: &Plan, capacities: &[u32]) -> Vec<Vec<DataFile>> {
    let mut out = vec![Vec::new(); capacities.len()];
    for (step, data) in plan.steps.iter().enumerate().filter_map(|(i, s)| Some((i, s.data.as_ref()?))) {
        let Some(set) = &data.set else { continue };
        let shares = split_u64(set.rows.len() as u64, capacities);
        let mut first = 0usize;
        for (agent, files) in out.iter_mut().enumerate() {
            let rows = match data.order {
                _ if capacities[agent] == 0 => 0..0,
                DataOrder::Unique => first..first + shares[agent] as usize,
                DataOrder::Sequential | DataOrder::Random => 0..set.rows.len(),
            };
            first += shares[agent] as usize;
            files.push(stampede_proto::data_to_wire(&data.file, step as u32, set, rows));
        }
    }
    out
}

/// A progress line per step with data: its file, rows and order, and how
/// many rows each agent got (`files` from [`data_files`]). No value.
/// A file a dry run did not find is said so.
pub fn data_summary(plan: &Plan, files: &[Vec<DataFile>]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, step) in plan.steps.iter().enumerate() {
        let Some(data) = &step.data else { continue };
        let order = String::from(data.order);
        let Some(set) = &data.set else {
            out.push(format!("data: step `{}` uses {} ({order}): not read here (a dry run without the file)", step.name, data.file));
            continue;
        };
        let rows = |agent: &Vec<DataFile>| agent.iter().find(|f| f.step as usize == i).map_or(0, |f| f.rows.len()).to_string();
        let shares: Vec<String> = files.iter().map(rows).collect();
        out.push(format!("data: step `{}` uses {}: {} rows, {order} (rows per agent: {})", step.name, data.file, set.rows.len(), shares.join("/")));
    }
    out
}

/// Largest-remainder split of a `u64` total by `weights`, in integers
/// (validation keeps iteration counts under 10⁹); weight 0 gets 0.
fn split_u64(total: u64, weights: &[u32]) -> Vec<u64> {
    let sum: u64 = weights.iter().map(|&c| u64::from(c)).sum();
    if sum == 0 {
        return vec![0; weights.len()];
    }
    // In u128: total × weight stays exact, no float rounding to argue about.
    let exact = |c: u32| u128::from(total) * u128::from(c);
    let mut parts: Vec<u64> = weights.iter().map(|&c| (exact(c) / u128::from(sum)) as u64).collect();
    let mut order: Vec<usize> = (0..weights.len()).filter(|&i| weights[i] > 0).collect();
    order.sort_by(|&a, &b| (exact(weights[b]) % u128::from(sum)).cmp(&(exact(weights[a]) % u128::from(sum))).then(a.cmp(&b)));
    let mut left = total - parts.iter().sum::<u64>();
    for i in order.into_iter().cycle() {
        if left == 0 {
            break;
        }
        parts[i] += 1;
        left -= 1;
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_rows_are_cut_into_disjoint_ranges_and_the_others_go_whole() {
        let yaml = r#"
name: t
target: http://127.0.0.1:1
phases: [{ name: p, duration: 1s, load: { model: closed, concurrency: 3 } }]
steps:
  - { name: u, request: { path: "/{{data.id}}" }, data: { file: u.csv, order: unique } }
  - { name: s, request: { path: "/{{data.id}}" }, data: { file: u.csv } }
"#;
        let mut plan = stampede_common::plan::load_str(yaml, stampede_common::plan::Format::Yaml, std::path::Path::new("t.yaml")).unwrap();
        let rows: Vec<Vec<String>> = (0..10).map(|i| vec![i.to_string()]).collect();
        let set = std::sync::Arc::new(stampede_common::plan::data::DataSet { columns: vec!["id".into()], rows });
        for s in &mut plan.steps {
            s.data.as_mut().unwrap().set = Some(set.clone());
        }
        let files = data_files(&plan, &[1, 0, 2, 1]);
        let ids = |f: &DataFile| f.rows.iter().map(|r| r.values[0].clone()).collect::<Vec<_>>();
        let unique: Vec<Vec<String>> = files.iter().map(|per_agent| ids(&per_agent[0])).collect();
        assert_eq!(unique, [vec!["0", "1", "2"], vec![], vec!["3", "4", "5", "6", "7"], vec!["8", "9"]]);
        assert!(files.iter().all(|f| f[0].columns == ["id"] && f[0].step == 0 && f[1].step == 1));
        let whole: Vec<usize> = files.iter().map(|f| f[1].rows.len()).collect();
        assert_eq!(whole, [10, 0, 10, 10], "a fault-only agent gets no rows");
    }

    #[test]
    fn iterations_follow_the_connections_exactly() {
        assert_eq!(split_u64(100, &[2, 1, 1]), vec![50, 25, 25]);
        assert_eq!(split_u64(100, &[2, 1, 0]), vec![67, 33, 0]);
        assert_eq!(split_u64(1, &[0, 1, 1]), vec![0, 1, 0]);
        assert_eq!(split_u64(7, &[0, 0]), vec![0, 0]);
        for total in 0..300u64 {
            let parts = split_u64(total, &[3, 0, 2, 7]);
            assert_eq!(parts.iter().sum::<u64>(), total);
            assert_eq!(parts[1], 0);
        }
    }

    #[test]
    fn parts_add_up_and_follow_capacity() {
        assert_eq!(split_by_capacity(50, &[1, 1, 1]), vec![17, 17, 16]);
        assert_eq!(split_by_capacity(10, &[3, 1]), vec![8, 2]);
        assert_eq!(split_by_capacity(1, &[1, 1]), vec![1, 0]);
        assert_eq!(split_by_capacity(0, &[1, 2]), vec![0, 0]);
        // A fault-only agent (capacity 0) gets no connection.
        assert_eq!(split_by_capacity(5, &[0, 1, 0, 1]), vec![0, 3, 0, 2]);
        for total in 0..200 {
            assert_eq!(split_by_capacity(total, &[5, 3, 2, 7]).iter().sum::<u32>(), total);
        }
    }
}
