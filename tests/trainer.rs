//! The generic trainer on tiny real models (NFM, SASRec, SVD, BPR-MF), in a process of its own:
//! libtorch's random generator is global, so these tests take one lock while they seed it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use _native::data::Interactions;
use _native::rng::Rng;
use _native::train::{EpochLog, FitOptions, Hooks, NoHooks, Spec, Trainer};
use tch::{Device, Tensor};

static RNG_LOCK: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    RNG_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
/// 60 users with 6-14 items each over 40 items, clustered so there is something to learn:
/// user u mostly picks items near `(u % 4) * 10`. Ratings follow the cluster too.
fn data() -> Arc<Interactions> {
    data_over(40)
}

/// [`data`] declared over `n_items` items (at least 40; the items above 39 get no interaction).
fn data_over(n_items: u64) -> Arc<Interactions> {
    let mut rng = Rng::new(7, 0);
    let (mut u, mut i, mut r, mut t) = (vec![], vec![], vec![], vec![]);
    for user in 0..60i64 {
        let n = 6 + (rng.next_u64() % 9) as i64;
        let mut seen = std::collections::HashSet::new();
        while (seen.len() as i64) < n {
            let base = (user % 4) * 10;
            let item = if rng.next_u64() % 5 == 0 {
                (rng.next_u64() % 40) as i64
            } else {
                base + (rng.next_u64() % 10) as i64
            };
            if seen.insert(item) {
                u.push(user);
                i.push(item);
                r.push(if item / 10 == user % 4 { 4.5 } else { 1.5 });
                t.push(seen.len() as i64);
            }
        }
    }
    Arc::new(
        Interactions::from_arrays(&u, &i, Some(&r), Some(&t), Some(60), Some(n_items)).unwrap(),
    )
}

fn spec(json: &str) -> Spec {
    Spec::from_json(json).unwrap()
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("recforge-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

const FM: &str = r#"{"model": "NFM", "dim": 8, "loss": "bce", "hidden": [8], "dropout": 0.1,
    "epochs": 5, "batch_size": 64, "lr": 0.01, "seed": 3, "reg": 0.0001}"#;
const SASREC: &str = r#"{"model": "SASRec", "dim": 16, "n_layers": 1, "n_heads": 2,
    "max_len": 10, "dropout": 0.1, "loss": "ce", "init_std": 0.05, "epochs": 5,
    "batch_size": 16, "lr": 0.005, "seed": 2}"#;

fn params(t: &Trainer) -> Vec<(String, Tensor)> {
    t.state_dict().unwrap()
}

/// The generic trainer trains a tiny NFM and a tiny SASRec: the loss falls, 2 epochs + 3
/// resumed from the checkpoint equal 5 straight (weights and losses), and a saved model
/// loads back with the same scores, spec and training interactions.
#[test]
fn fm_and_sasrec_train_resume_and_round_trip() {
    let _guard = lock();
    let train = data();
    for (name, json) in [("nfm", FM), ("sasrec", SASREC)] {
        let mut straight = Trainer::new(spec(json), 60, 40, Device::Cpu, None).unwrap();
        straight
            .fit(
                train.clone(),
                Some(&train),
                &FitOptions::default(),
                &mut NoHooks,
            )
            .unwrap();
        let losses: Vec<f64> = straight
            .history
            .iter()
            .map(|h| h.get("loss").unwrap())
            .collect();
        assert!(
            losses[4] < losses[0],
            "{name}: loss did not fall: {losses:?}"
        );
        assert!(straight.history[0].get("ndcg@10").is_some());

        let dir = tmp(name);
        let mut first = Trainer::new(spec(json), 60, 40, Device::Cpu, None).unwrap();
        let two = FitOptions {
            epochs: Some(2),
            checkpoint_dir: Some(dir.clone()),
            ..FitOptions::default()
        };
        first.fit(train.clone(), None, &two, &mut NoHooks).unwrap();
        let mut resumed = Trainer::new(spec(json), 60, 40, Device::Cpu, None).unwrap();
        let rest = FitOptions {
            checkpoint_dir: Some(dir.clone()),
            resume: true,
            ..FitOptions::default()
        };
        resumed
            .fit(train.clone(), None, &rest, &mut NoHooks)
            .unwrap();
        let got: Vec<f64> = resumed
            .history
            .iter()
            .map(|h| h.get("loss").unwrap())
            .collect();
        assert_eq!(got.len(), 5, "{name}");
        for (a, b) in got.iter().zip(&losses) {
            assert!((a - b).abs() < 1e-6, "{name}: {got:?} vs {losses:?}");
        }
        // `straight` keeps its best epoch's weights (it validated); compare with a
        // straight run without validation.
        let mut plain = Trainer::new(spec(json), 60, 40, Device::Cpu, None).unwrap();
        plain
            .fit(train.clone(), None, &FitOptions::default(), &mut NoHooks)
            .unwrap();
        for ((n, a), (_, b)) in params(&plain).iter().zip(params(&resumed).iter()) {
            let diff = (a - b).abs().max().double_value(&[]);
            assert!(diff < 1e-5, "{name}: {n} differs by {diff}");
        }

        let saved = dir.join("saved");
        plain.save(&saved).unwrap();
        let back = Trainer::load(&saved, Device::Cpu, None).unwrap();
        assert_eq!(back.spec(), plain.spec());
        assert_eq!(back.history, plain.history);
        let users = Tensor::from_slice(&[0i64, 5, 17]);
        let a = plain.model().score_all(&users, None).unwrap();
        let b = back.model().score_all(&users, None).unwrap();
        assert!(a.allclose(&b, 1e-6, 1e-6, false), "{name}: scores changed");
        let t = back.train_data().unwrap();
        assert_eq!(t.items(), train.items());
        let err = Trainer::load(&saved, Device::Cpu, Some("SVD"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("not a SVD"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A hook that stops after the second epoch ends training there, and the best weights of the
/// epochs run are kept; divergence is reported, not trained through.
#[test]
fn hooks_stop_and_divergence_is_an_error() {
    let _guard = lock();
    struct StopAt(u64);
    impl Hooks for StopAt {
        fn epoch(&mut self, log: &EpochLog) -> bool {
            log.get("epoch") == Some(self.0 as f64)
        }
    }
    let train = data();
    let svd = r#"{"model": "SVD", "dim": 4, "epochs": 6, "batch_size": 32, "lr": 0.01}"#;
    let mut t = Trainer::new(spec(svd), 60, 40, Device::Cpu, None).unwrap();
    let r = t
        .fit(
            train.clone(),
            Some(&train),
            &FitOptions::default(),
            &mut StopAt(1),
        )
        .unwrap();
    assert!(r.stopped && !r.interrupted);
    assert_eq!(t.history.len(), 2);
    assert!(t.history[0].get("rmse").is_some());

    let wild = r#"{"model": "BPRMF", "dim": 8, "epochs": 6, "batch_size": 16, "lr": 1e9,
        "init_std": 1.0}"#;
    let mut t = Trainer::new(spec(wild), 60, 40, Device::Cpu, None).unwrap();
    let err = t
        .fit(train, None, &FitOptions::default(), &mut NoHooks)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("diverged") || err.contains("lower the learning rate"),
        "{err}"
    );
}

/// Parameter groups: a group's parameters move with its own learning rate.
#[test]
fn param_groups_set_their_own_learning_rate() {
    let _guard = lock();
    let train = data();
    let json = r#"{"model": "BPRMF", "dim": 4, "epochs": 1, "batch_size": 4096, "lr": 0.01,
        "optimizer": "sgd", "param_groups": [{"prefix": "item_", "lr": 1e-12}]}"#;
    let mut t = Trainer::new(spec(json), 60, 40, Device::Cpu, None).unwrap();
    let before: HashMap<String, Tensor> = t.state_dict().unwrap().into_iter().collect();
    t.fit(train, None, &FitOptions::default(), &mut NoHooks)
        .unwrap();
    let after: HashMap<String, Tensor> = t.state_dict().unwrap().into_iter().collect();
    let moved = |n: &str| (&after[n] - &before[n]).abs().max().double_value(&[]);
    assert!(moved("user_factors") > 1e-6);
    assert!(moved("item_factors") < 1e-9);
}

/// A parameter that stops being finite where no batch reads it (the row of an item without
/// ratings) leaves every loss finite; the end-of-epoch check still names it.
#[test]
fn a_non_finite_parameter_is_found_after_the_epoch() {
    let _guard = lock();
    let svd = r#"{"model": "SVD", "dim": 4, "epochs": 1, "batch_size": 32, "lr": 0.01}"#;
    // 41 items: item 40 has no rating, so its rows get no gradient.
    let mut t = Trainer::new(spec(svd), 60, 41, Device::Cpu, None).unwrap();
    let mut poisoned = 0;
    for (_, p) in t.model_mut().params() {
        if p.size().first() == Some(&41) {
            tch::no_grad(|| {
                let _ = p.narrow(0, 40, 1).fill_(f64::NAN);
            });
            poisoned += 1;
        }
    }
    assert!(poisoned > 0);
    let err = t
        .fit(data_over(41), None, &FitOptions::default(), &mut NoHooks)
        .unwrap_err()
        .to_string();
    assert!(err.contains("is no longer finite"), "{err}");
}
