process MERGE {
    tag "${model.subdir ? model.label + ': ' : ''}${meta.id}"
    label 'cpu_large'
    conda "${projectDir}/envs/classical.yml"

    input:
    tuple val(model), val(meta), path(job), path(substacks, stageAs: 'substacks/?/*')   // each SEGMENT task names its outputs 0, 1, ...
    val code          // digest of the Python files this step runs: a change reruns the task

    output:
    tuple val(model), val(meta), path(job), path('result'), emit: result

    script:
    def args = task.ext.args ?: ''
    """
    rm -rf result               # a folder -resume reuses may hold a killed attempt's part
    aiod merge --plan ${job} --out result ${args} substacks/*/*
    """

    stub:
    """
    mkdir -p result/labels.ome.zarr
    echo '{"stub": true}' > result/manifest.json
    """
}
