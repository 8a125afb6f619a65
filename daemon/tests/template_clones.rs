//! Task VMs are copy-on-write clones of a template (QEMU backend, TCG,
//! jailed exactly as the daemon runs it): each clone maps the template's
//! sealed RAM memfd private, takes a fresh identity, and runs a real task;
//! a corrupted template is found by its checksum and made again; a clone
//! reads the template's application disk (OCR).

mod qemu_support;

use std::time::{Duration, Instant};

use qemu_support::*;
use vitrine_daemon::backend::template::store;
use vitrine_shim::protocol::TaskStatus;

#[test]
fn clones_share_the_sealed_template_ram_privately_and_differ_in_identity() {
    let test = "clones_share_the_sealed_template_ram_privately_and_differ_in_identity";
    let Some(image) = image_or_skip(test) else {
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let cloner = cloner(&image, cache.path());
    let config = config(&image);

    let made = Instant::now();
    let template = cloner.template(&config).unwrap();
    let make_time = made.elapsed();
    let (mut a, origin_a) = cloner.clone_vm(&config).unwrap();
    let (mut b, origin_b) = cloner.clone_vm(&config).unwrap();
    let (pid_a, pid_b) = (a.qemu_pid().unwrap(), b.qemu_pid().unwrap());
    let idle_private_kib = private_kib(pid_a);
    let (map_a, private_a) = template_mapping(pid_a).expect("clone a maps the template");
    let (map_b, private_b) = template_mapping(pid_b).expect("clone b maps the template");
    let (digest_a, status_a) = text_task(&mut a, "clone A\n");
    let (digest_b, status_b) = text_task(&mut b, "clone B\n");

    loud(&format!(
        "{test}: template made in {make_time:?} ({} KiB of state); clones up in {:?} and {:?}; \
         both map memfd inode {map_a:?}; an idle clone's private memory: {idle_private_kib} KiB",
        template.state.len() / 1024,
        origin_a.clone_time,
        origin_b.clone_time
    ));
    assert_eq!(map_a, map_b, "both clones map the same template memfd");
    assert!(
        private_a && private_b,
        "the template RAM is mapped MAP_PRIVATE"
    );
    assert!(store::is_write_sealed(template.memory.as_ref()));
    assert_eq!(status_a, TaskStatus::Ok);
    assert_eq!(status_b, TaskStatus::Ok);
    assert_ne!(digest_a, digest_b, "two clones drew the same random bytes");
    assert_eq!(origin_a.template, origin_b.template);
}

#[test]
fn a_corrupted_or_truncated_template_is_found_and_made_again_before_any_task() {
    let test = "a_corrupted_or_truncated_template_is_found_and_made_again_before_any_task";
    let Some(image) = image_or_skip(test) else {
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let config = config(&image);
    let dir = {
        let cloner = cloner(&image, cache.path());
        cloner.template(&config).unwrap().dir.clone()
    };
    for (file, damage) in [("memory", "flip"), ("state", "truncate")] {
        let path = dir.join(file);
        let before = file_fingerprint(&path).0;
        match damage {
            // A byte in the middle of the first page that holds data.
            "flip" => {
                use std::os::unix::fs::FileExt;
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .unwrap();
                let mut head = vec![0u8; 16 * 1024 * 1024];
                f.read_exact_at(&mut head, 0).unwrap();
                let at = head.iter().position(|b| *b != 0).unwrap() + 100;
                f.write_all_at(&[head[at] ^ 0x5a], at as u64).unwrap();
            }
            _ => {
                let len = std::fs::metadata(&path).unwrap().len();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .unwrap()
                    .set_len(len / 2)
                    .unwrap();
            }
        }
        // A new daemon's cloner finds the template on disk.
        let cloner = cloner(&image, cache.path());

        let (mut vm, origin) = cloner.clone_vm(&config).unwrap();
        let (_, status) = text_task(&mut vm, "after the rebuild\n");

        let why = cloner
            .last_rebuild()
            .expect("the rebuild is logged with its reason");
        loud(&format!("{test}: {file} {damage}: {why}"));
        assert!(why.contains("SHA-256"), "{why}");
        assert!(why.contains(file), "{why}");
        assert_ne!(
            file_fingerprint(&path).0,
            before,
            "the damaged file was replaced"
        );
        assert_eq!(status, TaskStatus::Ok);
        assert!(origin.clone_time < Duration::from_secs(30));
    }
}

#[test]
fn a_clone_runs_ocr_from_the_application_disk_it_shares_with_its_template() {
    let test = "a_clone_runs_ocr_from_the_application_disk_it_shares_with_its_template";
    let Some(image) = image_or_skip(test) else {
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let cloner = cloner(&image, cache.path());
    let config = config(&image);
    assert!(
        config.image.app_disk.is_some(),
        "the image has no apps.squashfs"
    );

    let (mut vm, _) = cloner.clone_vm(&config).unwrap();
    let run = ocr_task(&mut vm, "Meeting moved to Thursday afternoon\n");

    loud(&format!(
        "{test}: {:?}",
        run.logs
            .iter()
            .filter(|l| l.contains("ocr"))
            .collect::<Vec<_>>()
    ));
    assert_eq!(run.status, Some(TaskStatus::Ok), "logs: {:?}", run.logs);
    let words: Vec<&str> = run.prints[&0]
        .words
        .iter()
        .map(|w| w.text.as_str())
        .collect();
    for expected in ["Meeting", "Thursday", "afternoon"] {
        assert!(words.contains(&expected), "no {expected:?} in {words:?}");
    }
}
