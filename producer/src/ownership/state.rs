//! Which partitions this instance serves, which it is taking over, and what must happen
//! next — as a plain value with no I/O, so every transition (and every race the chaos runs
//! found) is a unit test. `Lanes` applies the [`Step`]s it answers: it fences, loads and
//! reads the tail for a take-over, and only then asks [`Ownership::opened`] whether the lane
//! may serve.

use std::collections::{BTreeMap, BTreeSet};

use crate::partitioning::{Mode, PartitionPolicy};

/// Names one take-over, and the lane it becomes once it serves. Never reused.
pub type LaneId = u64;

/// What the owner of an [`Ownership`] must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Fence the lane's transactional id, load its state (snapshot, then the tail), then
    /// call [`Ownership::opened`]; retry on failure until cancelled.
    TakeOver { lane: LaneId, partitions: Vec<i32> },
    /// Stop the take-over `lane`: its partitions were revoked first.
    Cancel { lane: LaneId },
    /// Stop serving `lane`: let its commits in flight finish, store its snapshot, close it.
    GiveUp { lane: LaneId },
    /// Close `lane` at once: another instance fenced it, its partitions are not its own.
    Close { lane: LaneId },
}

#[derive(Debug)]
pub struct Ownership {
    policy: PartitionPolicy,
    /// True once the group gave this instance its share (always in `single` mode).
    joined: bool,
    /// What the group gives this instance now.
    assigned: BTreeSet<i32>,
    taking: BTreeMap<LaneId, Vec<i32>>,
    serving: BTreeMap<LaneId, Vec<i32>>,
    next: LaneId,
}

impl Ownership {
    pub fn new(policy: PartitionPolicy) -> Ownership {
        Ownership {
            policy,
            joined: policy.mode == Mode::Single,
            assigned: BTreeSet::new(),
            taking: BTreeMap::new(),
            serving: BTreeMap::new(),
            next: 1,
        }
    }

    /// The group gives this instance `partitions` (in `single` mode: every partition, once
    /// at start-up). Partitions already served or being taken over are left as they are.
    pub fn assign(&mut self, partitions: &[i32]) -> Vec<Step> {
        self.joined = true;
        self.assigned.extend(partitions.iter().copied());
        let new: Vec<i32> = partitions
            .iter()
            .copied()
            .filter(|p| self.lane_holding(*p).is_none())
            .collect::<BTreeSet<i32>>()
            .into_iter()
            .collect();
        self.policy
            .lanes_of(new)
            .into_iter()
            .map(|partitions| {
                let lane = self.next;
                self.next += 1;
                self.taking.insert(lane, partitions.clone());
                Step::TakeOver { lane, partitions }
            })
            .collect()
    }

    /// The group takes `partitions` away: take-overs of them stop, lanes serving them are
    /// given up (a lane of several partitions, `single` mode, as a whole).
    pub fn revoke(&mut self, partitions: &[i32]) -> Vec<Step> {
        self.assigned.retain(|p| !partitions.contains(p));
        let touches = |lane: &Vec<i32>| lane.iter().any(|p| partitions.contains(p));
        let mut steps = Vec::new();
        self.taking.retain(|lane, held| {
            let keep = !touches(held);
            if !keep {
                steps.push(Step::Cancel { lane: *lane });
            }
            keep
        });
        self.serving.retain(|lane, held| {
            let keep = !touches(held);
            if !keep {
                steps.push(Step::GiveUp { lane: *lane });
            }
            keep
        });
        steps
    }

    /// The take-over `lane` has fenced and read its partitions: true when it may serve them
    /// now, false when it was cancelled meanwhile (the caller closes it).
    pub fn opened(&mut self, lane: LaneId) -> bool {
        match self.taking.remove(&lane) {
            Some(partitions) => {
                self.serving.insert(lane, partitions);
                true
            }
            None => false,
        }
    }

    /// A request found `lane` fenced. In `partitions` mode another instance took its
    /// partition while this one did not notice (a long pause) — or, if the group still
    /// gives it here, a take-over that was revoked half-way initialised the id after this
    /// lane did: the lane closes, and a partition still assigned is taken over again
    /// (fencing that stray producer). In `single` mode a newer instance with the same id is
    /// the writer now: the lane stays, answering 503. Seen twice, it acts once.
    pub fn fenced(&mut self, lane: LaneId) -> Vec<Step> {
        if self.policy.mode == Mode::Single {
            return Vec::new();
        }
        let Some(partitions) = self.serving.remove(&lane) else {
            return Vec::new();
        };
        let mut steps = vec![Step::Close { lane }];
        let still_mine: Vec<i32> = partitions
            .into_iter()
            .filter(|p| self.assigned.contains(p))
            .collect();
        steps.extend(self.assign(&still_mine));
        steps
    }

    /// Whether the take-over `lane` is still wanted (not revoked, not opened yet).
    pub fn is_taking(&self, lane: LaneId) -> bool {
        self.taking.contains_key(&lane)
    }

    /// The lane serving `partition`, if one does.
    pub fn serving_lane(&self, partition: i32) -> Option<LaneId> {
        self.serving
            .iter()
            .find(|(_, held)| held.contains(&partition))
            .map(|(lane, _)| *lane)
    }

    /// The partitions served here, sorted.
    pub fn served(&self) -> Vec<i32> {
        let mut served: Vec<i32> = self.serving.values().flatten().copied().collect();
        served.sort_unstable();
        served
    }

    /// The lanes serving, with their partitions.
    pub fn serving(&self) -> impl Iterator<Item = (LaneId, &[i32])> {
        self.serving
            .iter()
            .map(|(lane, held)| (*lane, held.as_slice()))
    }

    /// Ready once the group gave this instance its share and every part of it serves.
    pub fn status(&self) -> Result<(), String> {
        if !self.joined {
            return Err("joining the producers' group".into());
        }
        if !self.taking.is_empty() {
            let taking: Vec<i32> = self.taking.values().flatten().copied().collect();
            return Err(format!("taking over partitions {taking:?}"));
        }
        if self.policy.mode == Mode::Single && self.serving.is_empty() {
            return Err("reading the log".into());
        }
        Ok(())
    }

    fn lane_holding(&self, partition: i32) -> Option<LaneId> {
        self.taking
            .iter()
            .chain(&self.serving)
            .find(|(_, held)| held.contains(&partition))
            .map(|(lane, _)| *lane)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partitions_mode() -> Ownership {
        Ownership::new(PartitionPolicy::new(Mode::Partitions, 3))
    }

    fn take_overs(steps: &[Step]) -> Vec<(LaneId, Vec<i32>)> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::TakeOver { lane, partitions } => Some((*lane, partitions.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn given_single_mode_when_started_then_one_lane_takes_every_partition() {
        let mut ownership = Ownership::new(PartitionPolicy::new(Mode::Single, 3));
        assert_eq!(ownership.status(), Err("reading the log".into()));
        let steps = ownership.assign(&[0, 1, 2]);
        assert_eq!(take_overs(&steps), vec![(1, vec![0, 1, 2])]);
        assert!(ownership.status().unwrap_err().contains("taking over"));
        assert!(ownership.opened(1));
        assert_eq!(ownership.status(), Ok(()));
        assert_eq!(ownership.serving_lane(2), Some(1));
    }

    #[test]
    fn given_partitions_mode_when_assigned_then_one_lane_per_partition_and_ready_once_all_serve() {
        let mut ownership = partitions_mode();
        assert_eq!(
            ownership.status(),
            Err("joining the producers' group".into())
        );
        let steps = ownership.assign(&[2, 0]);
        assert_eq!(take_overs(&steps), vec![(1, vec![0]), (2, vec![2])]);
        assert!(ownership.opened(1));
        assert!(
            ownership.status().is_err(),
            "partition 2 is still being taken over"
        );
        assert!(ownership.opened(2));
        assert_eq!(ownership.status(), Ok(()));
        assert_eq!(ownership.served(), vec![0, 2]);
    }

    #[test]
    fn given_an_empty_share_when_assigned_then_joined_and_ready() {
        let mut ownership = partitions_mode();
        assert!(ownership.assign(&[]).is_empty());
        assert_eq!(ownership.status(), Ok(()));
    }

    #[test]
    fn given_a_take_over_under_way_when_assigned_again_then_no_second_take_over() {
        let mut ownership = partitions_mode();
        ownership.assign(&[1]);
        assert!(ownership.assign(&[1]).is_empty());
        assert!(ownership.opened(1));
        assert!(ownership.assign(&[1]).is_empty(), "served already");
    }

    #[test]
    fn given_a_take_over_when_revoked_half_way_then_cancelled_and_its_lane_never_serves() {
        let mut ownership = partitions_mode();
        ownership.assign(&[1]);
        assert!(ownership.is_taking(1));
        assert_eq!(ownership.revoke(&[1]), vec![Step::Cancel { lane: 1 }]);
        assert!(
            !ownership.is_taking(1),
            "a take-over not started yet does not start"
        );
        assert!(
            !ownership.opened(1),
            "the lane that finished late is closed"
        );
        assert_eq!(ownership.serving_lane(1), None);
        assert_eq!(ownership.status(), Ok(()));
    }

    #[test]
    fn given_a_revoked_take_over_when_assigned_again_then_a_second_take_over_and_only_it_serves() {
        let mut ownership = partitions_mode();
        ownership.assign(&[1]);
        ownership.revoke(&[1]);
        let steps = ownership.assign(&[1]);
        assert_eq!(take_overs(&steps), vec![(2, vec![1])]);
        assert!(
            !ownership.opened(1),
            "the first take-over finishing late is closed"
        );
        assert!(ownership.opened(2));
        assert_eq!(ownership.serving_lane(1), Some(2));
    }

    #[test]
    fn given_a_served_partition_when_revoked_then_given_up() {
        let mut ownership = partitions_mode();
        ownership.assign(&[0, 1]);
        ownership.opened(1);
        ownership.opened(2);
        assert_eq!(ownership.revoke(&[1]), vec![Step::GiveUp { lane: 2 }]);
        assert_eq!(ownership.served(), vec![0]);
    }

    #[test]
    fn given_a_lane_fenced_while_still_assigned_when_seen_then_closed_and_taken_over_again() {
        let mut ownership = partitions_mode();
        ownership.assign(&[1]);
        ownership.opened(1);
        let steps = ownership.fenced(1);
        assert_eq!(steps[0], Step::Close { lane: 1 });
        assert_eq!(take_overs(&steps), vec![(2, vec![1])]);
        assert_eq!(
            ownership.serving_lane(1),
            None,
            "not served until the new lane opened"
        );
        assert!(
            ownership.fenced(1).is_empty(),
            "seen by a second request: acted on once"
        );
        assert!(ownership.opened(2));
    }

    #[test]
    fn given_a_lane_fenced_after_its_partition_moved_when_seen_then_closed_only() {
        let mut ownership = partitions_mode();
        ownership.assign(&[1]);
        ownership.opened(1);
        // The group moved the partition while this instance was paused: revoke never ran
        // here, so the assignment is gone but the lane still serves.
        ownership.assigned.clear();
        assert_eq!(ownership.fenced(1), vec![Step::Close { lane: 1 }]);
        assert_eq!(ownership.served(), Vec::<i32>::new());
    }

    #[test]
    fn given_single_mode_when_fenced_then_the_lane_stays() {
        let mut ownership = Ownership::new(PartitionPolicy::new(Mode::Single, 2));
        ownership.assign(&[0, 1]);
        ownership.opened(1);
        assert!(ownership.fenced(1).is_empty());
        assert_eq!(ownership.serving_lane(0), Some(1));
    }

    #[test]
    fn given_single_mode_when_one_partition_is_revoked_then_the_whole_lane_is_given_up() {
        let mut ownership = Ownership::new(PartitionPolicy::new(Mode::Single, 2));
        ownership.assign(&[0, 1]);
        ownership.opened(1);
        assert_eq!(ownership.revoke(&[0]), vec![Step::GiveUp { lane: 1 }]);
    }
}
