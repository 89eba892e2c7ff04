process FINETUNE_TRAIN {
    tag "${model.label}"
    label 'gpu'
    conda "${projectDir}/envs/${model.family}.yml"

    input:
    // model: [index, label, subdir, family]; spec: its fetched model.json (FETCH_ARTIFACTS)
    tuple val(model), path(spec)
    // the samplesheet, its own absolute path, and every image and ground truth it names (staged
    // only so that a changed one reruns the task; they are read at their own paths)
    tuple path(samplesheet), val(source), path(data, stageAs: 'data/?/*')
    path train_params        // the training parameters' file (--finetune_params), or []
    val code                 // digest of the Python files this step runs: a change reruns the task

    output:
    tuple val(model), path('finetune.json'), path('finetune.html'), emit: report

    script:
    // checkpoints go to <root_dir>/aiod_cache/<family>/training/ (--root-dir in ext.args): a
    // rerun after a killed task continues from the last finished epoch
    def args = task.ext.args ?: ''
    """
    export AIOD_FAMILY=${model.family}
    aiod finetune --spec ${spec} --input '${source}' --out . ${train_params ? "--params ${train_params}" : ''} ${args}
    """

    stub:
    """
    echo '{"format": "aiod-finetune/1", "registered": false, "stub": true}' > finetune.json
    echo '<!doctype html><p>stub run: nothing trained</p>' > finetune.html
    """
}
