#!/usr/bin/env bash
# Bootstrap of a b-hive batch job (rendered by law): set up the same checkout and outputs
# as on the submitting machine (both must be on a shared file system, e.g. AFS/EOS).
action() {
    export DATA_PATH="{{bhive_data_path}}"
    source "{{bhive_dir}}/setup.sh" || return "$?"
}
action
