process MERGE {
    tag "${meta.id}"
    label 'cpu_large'

    input:
    tuple val(meta), path(job), path(substacks, stageAs: 'substacks/*')
    val code          // digest of the Python files this step runs: a change reruns the task

    output:
    tuple val(meta), path(job), path('result'), emit: result

    script:
    def args = task.ext.args ?: ''
    """
    aiod merge --plan ${job} --out result ${args} substacks/*
    """

    stub:
    """
    mkdir -p result/labels.ome.zarr
    echo '{"stub": true}' > result/manifest.json
    """
}
