process FINALIZE {
    tag "${meta.id}"
    label 'cpu_small'

    input:
    tuple val(meta), path(plan), path(result)  // result: MERGE's output, or [] when the cache already has it
    val code                                   // digest of the Python files this step runs: a change reruns the task

    output:
    tuple val(meta), path("${meta.id}.ome.zarr"), emit: labels   // a link to the cache entry's labels
    tuple val(meta), path("${meta.id}.json"), emit: record       // the record, as published (ext.args --outdir)

    script:
    def args = task.ext.args ?: ''
    def from_merge = result ? "--result ${result}" : ''
    """
    aiod finalize --plan ${plan} ${from_merge} --id '${meta.id}' ${args}
    """

    stub:
    """
    mkdir ${meta.id}.ome.zarr
    echo '{"id": "${meta.id}", "objects": 0, "cache": "stub"}' > ${meta.id}.json
    """
}
