//! Splitting fleet-wide numbers between agents by declared capacity.

/// Splits `total` into integer parts proportional to `capacities`, by the
/// largest remainder, so the parts always add up to `total` exactly.
pub fn split_by_capacity(total: u32, capacities: &[u32]) -> Vec<u32> {
    let sum: u64 = capacities.iter().map(|&c| c as u64).sum();
    if capacities.is_empty() || sum == 0 {
        return vec![0; capacities.len()];
    }
    let exact: Vec<f64> = capacities.iter().map(|&c| total as f64 * c as f64 / sum as f64).collect();
    let mut parts: Vec<u32> = exact.iter().map(|e| e.floor() as u32).collect();
    let mut left = total - parts.iter().sum::<u32>();
    // Only agents with capacity take the remainder: a fault-only agent
    // (capacity 0) gets nothing, whatever the rounding.
    let mut order: Vec<usize> = (0..parts.len()).filter(|&i| capacities[i] > 0).collect();
    order.sort_by(|&a, &b| (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor())).then(a.cmp(&b)));
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
